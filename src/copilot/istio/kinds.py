"""The Istio kinds Copilot serves: their MCP collection (type URL istiod asks for), their proto message,
and the order a change is pushed to istiod in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import Message

from copilot.protos import istio_networking_pb2 as networking


@dataclass(frozen=True, eq=False)  # one object per kind: compared and hashed by identity (a hot dict key)
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

# The order the MCP server pushes a change in, when several kinds moved at once (and answers the
# requests istiod made before the first snapshot). Make before break: an object goes out before the
# objects that refer to it, so istiod never builds a route to something it does not know yet (a
# subset it has no DestinationRule for is a 503, a Gateway it has not seen drops the route).
# - DestinationRule: subsets and TLS to the instances; referred to by VirtualService routes.
# - Gateway: the router's listeners; referred to by VirtualServices (`gateways`).
# - ServiceEntry: the hosts and endpoints VirtualService routes point at.
# - EnvoyFilter: patches what the three above generate (the gateway's connection managers, the
#   clusters of identity-checked instances); a patch whose target is missing is applied when it
#   appears, so after them costs nothing, and it must be in place before routes use them: it carries
#   the route-integrity check (fail closed) and the gorouter headers every route is expected to have.
#   (It is built once from the config at start, so in practice it goes out in the first answers only.)
# - VirtualService: the routes, last, once everything they use is there.
# A subset a DestinationRule drops while a VirtualService still routes to it goes a moment before the
# VirtualService moves (an update, not a removal; istiod's push debounce usually folds both into one push).
PUSH_ORDER = (DESTINATION_RULE, GATEWAY, SERVICE_ENTRY, ENVOY_FILTER, VIRTUAL_SERVICE)

# Removals go the other way round (break after the last user is gone): the routes first, the
# DestinationRule last. Removed the other way, istiod can push a host's cluster after its DestinationRule
# went but before its ServiceEntry did: a cluster without the TLS to the instances, which the
# route-integrity EnvoyFilter's patch then makes invalid ("auto_sni_san_validation configured without a
# validation context"), and the router rejects the whole cluster update. The store applies an apply's
# removals kind by kind in this order, each step its own snapshot, sent whole before the next
# (Snapshot.barrier); an apply's upserts go with the first step.
REMOVAL_ORDER = tuple(reversed(PUSH_ORDER))


@dataclass(frozen=True)
class IstioObject:
    """One config object: its kind, `namespace/name`, and its spec message."""

    kind: Kind
    name: str
    spec: Message


class EncodedObject(NamedTuple):
    """An IstioObject whose spec was written as wire bytes (copilot.istio.host_wire): the store takes
    `body` as it is; `spec` decodes it (for tests and debugging, never on the publishing path)."""

    kind: Kind
    name: str
    body: bytes

    @property
    def spec(self) -> Message:
        return self.kind.message.FromString(self.body)
