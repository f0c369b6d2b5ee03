"""The Istio kinds Copilot serves: their MCP collection (type URL istiod asks for) and their proto message."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from copilot.protos import istio_networking_pb2 as networking


@dataclass(frozen=True)
class Kind:
    name: str
    collection: str  # the type_url istiod subscribes with over MCP-over-xDS
    message: type[Message]


GATEWAY = Kind("Gateway", "networking.istio.io/v1/Gateway", networking.Gateway)
VIRTUAL_SERVICE = Kind("VirtualService", "networking.istio.io/v1/VirtualService", networking.VirtualService)
DESTINATION_RULE = Kind("DestinationRule", "networking.istio.io/v1/DestinationRule", networking.DestinationRule)
SERVICE_ENTRY = Kind("ServiceEntry", "networking.istio.io/v1/ServiceEntry", networking.ServiceEntry)
# istiod still asks for EnvoyFilter under v1alpha3 (the kind never graduated).
ENVOY_FILTER = Kind("EnvoyFilter", "networking.istio.io/v1alpha3/EnvoyFilter", networking.EnvoyFilter)

ALL = (GATEWAY, VIRTUAL_SERVICE, DESTINATION_RULE, SERVICE_ENTRY, ENVOY_FILTER)


@dataclass(frozen=True)
class IstioObject:
    """One config object: its kind, `namespace/name`, and its spec message."""

    kind: Kind
    name: str
    spec: Message
