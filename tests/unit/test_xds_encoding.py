"""The wire layout: MCP resource envelopes and DiscoveryResponses, checked against protobuf's own serializer."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st

from copilot.istio import kinds
from copilot.istio.kinds import IstioObject
from copilot.protos import istio_mcp_pb2 as mcp
from copilot.protos import istio_networking_pb2 as pb
from copilot.xds.encoding import MCP_RESOURCE_TYPE, content_digest, encode_response, length_delimited, varint
from copilot.xds.store import Store

VS = kinds.VIRTUAL_SERVICE


def vs(host: str, subset: str = "s") -> pb.VirtualService:
    spec = pb.VirtualService(hosts=[host], gateways=["cf/ingress"])
    spec.http.add(name="/").route.add(destination=pb.Destination(host=host, subset=subset))
    return spec


def response(store: Store, kind: kinds.Kind = VS, nonce: str = "7") -> discovery_pb2.DiscoveryResponse:
    snapshot = store.snapshot()
    return discovery_pb2.DiscoveryResponse.FromString(
        encode_response(snapshot.resources(kind.collection), kind.collection, nonce)
    )


def test_a_response_is_the_discovery_response_protobuf_would_write() -> None:
    store = Store()
    specs = {f"cf/app-{i}": vs(f"app-{i}.example.com", subset="x" * (i * 70)) for i in range(4)}  # lengths over 127
    specs["cf/app-long"] = vs("long.example.com", subset="y" * 70_000)  # lengths over 65,535: past the varint table
    store.apply(IstioObject(VS, name, spec) for name, spec in specs.items())
    snapshot = store.snapshot().resources(VS.collection)
    expected = discovery_pb2.DiscoveryResponse(version_info=snapshot.version, type_url=VS.collection, nonce="7")
    for name, resource in snapshot.items():
        wrapped = mcp.Resource(
            metadata=mcp.Metadata(name=name, version=f"{resource.digest:032x}"),
            body=any_pb2.Any(
                type_url="type.googleapis.com/istio.networking.v1alpha3.VirtualService",
                value=specs[name].SerializeToString(deterministic=True),
            ),
        )
        expected.resources.add(type_url=MCP_RESOURCE_TYPE, value=wrapped.SerializeToString(deterministic=True))
    raw = encode_response(snapshot, VS.collection, "7")
    assert raw == expected.SerializeToString(deterministic=True)
    assert encode_response(snapshot, VS.collection, "7") == raw  # a response is a join of what was encoded once


def test_resources_unpack_to_the_specs() -> None:
    store = Store()
    store.apply([IstioObject(VS, "cf/app", vs("app.example.com"))])
    [wrapped] = response(store).resources
    assert wrapped.type_url == MCP_RESOURCE_TYPE
    resource = mcp.Resource.FromString(wrapped.value)
    assert resource.metadata.name == "cf/app"
    assert (
        resource.metadata.version
        == f"{content_digest(VS, 'cf/app', vs('app.example.com').SerializeToString(deterministic=True)):032x}"
    )
    body = pb.VirtualService()
    assert resource.body.Unpack(body) and body == vs("app.example.com")


def test_a_type_with_no_resources_is_an_empty_response() -> None:
    decoded = response(Store(), kinds.GATEWAY, "1")
    assert list(decoded.resources) == [] and decoded.type_url == kinds.GATEWAY.collection and decoded.nonce == "1"
    assert decoded.version_info == Store().version(kinds.GATEWAY)


def test_digest_depends_on_name_kind_and_content_only() -> None:
    body = vs("a.example.com").SerializeToString(deterministic=True)
    a = content_digest(VS, "cf/a", body)
    assert a == content_digest(VS, "cf/a", vs("a.example.com").SerializeToString(deterministic=True))
    assert a != content_digest(VS, "cf/b", body)
    assert a != content_digest(VS, "cf/a", vs("a.example.com", subset="other").SerializeToString(deterministic=True))
    assert content_digest(VS, "cf/x", b"") != content_digest(kinds.DESTINATION_RULE, "cf/x", b"")  # same bytes, another type


@given(st.integers(min_value=1, max_value=2**64 - 1), st.binary(min_size=1, max_size=20_000))
def test_wire_helpers_match_protobuf(value: int, payload: bytes) -> None:
    assert b"\x08" + varint(value) == wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert length_delimited(1, payload) == wrappers_pb2.BytesValue(value=payload).SerializeToString()


def test_varint_examples() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(16384) == b"\x80\x80\x01"
