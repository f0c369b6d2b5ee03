"""The snapshot: content-addressed versions, deletes, listeners, and the pre-encoded MCP resources."""

from __future__ import annotations

import random

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st

from copilot.protos import istio_mcp_pb2 as mcp
from copilot.protos import istio_networking_pb2 as pb
from copilot.xds.snapshot import MCP_RESOURCE_TYPE, Snapshot, encode_resource
from copilot.xds.wire import length_delimited, varint

VS = "networking.istio.io/v1/VirtualService"
SE = "networking.istio.io/v1/ServiceEntry"


def vs(host: str, subset: str = "s") -> pb.VirtualService:
    spec = pb.VirtualService(hosts=[host], gateways=["cf/ingress"])
    spec.http.add(name="/").route.add(destination=pb.Destination(host=host, subset=subset))
    return spec


def resources(n: int = 5) -> list[tuple[str, str, object]]:
    return [(VS, f"ns/host-{i}", encode_resource(f"ns/host-{i}", vs(f"h{i}.example.com"))) for i in range(n)]


def decode(encoded: list[bytes]) -> list[mcp.Resource]:
    response = discovery_pb2.DiscoveryResponse.FromString(b"".join(encoded))
    out = []
    for wrapped in response.resources:
        assert wrapped.type_url == MCP_RESOURCE_TYPE
        out.append(mcp.Resource.FromString(wrapped.value))
    return out


# ---------------------------------------------------------------- encoding


def test_encoded_resource_is_a_discovery_response_resources_field() -> None:
    spec = vs("app.example.com")
    entry = encode_resource("cf/app", spec)
    [resource] = decode([entry.encoded])
    assert resource.metadata.name == "cf/app"
    assert resource.metadata.version  # the content digest
    assert resource.body.type_url == "type.googleapis.com/istio.networking.v1alpha3.VirtualService"
    body = pb.VirtualService()
    assert resource.body.Unpack(body)
    assert body == spec


def test_encoded_resource_matches_protobuf_serialisation() -> None:
    spec = vs("app.example.com")
    entry = encode_resource("cf/app", spec)
    [resource] = decode([entry.encoded])
    expected = mcp.Resource(
        metadata=mcp.Metadata(name="cf/app", version=resource.metadata.version),
        body=any_pb2.Any(
            type_url="type.googleapis.com/istio.networking.v1alpha3.VirtualService",
            value=spec.SerializeToString(deterministic=True),
        ),
    )
    wrapped = any_pb2.Any(type_url=MCP_RESOURCE_TYPE, value=expected.SerializeToString(deterministic=True))
    assert entry.encoded == length_delimited(2, wrapped.SerializeToString(deterministic=True))


def test_digest_depends_on_name_and_content_only() -> None:
    a = encode_resource("cf/a", vs("a.example.com"))
    assert a == encode_resource("cf/a", vs("a.example.com"))
    assert a.digest != encode_resource("cf/b", vs("a.example.com")).digest
    assert a.digest != encode_resource("cf/a", vs("a.example.com", subset="other")).digest
    # same bytes, different message type
    assert encode_resource("cf/x", pb.VirtualService()).digest != encode_resource("cf/x", pb.DestinationRule()).digest


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


# ---------------------------------------------------------------- versions


def test_empty_type_has_a_stable_version() -> None:
    assert Snapshot().version(VS) == Snapshot().version(VS)
    view = Snapshot().view(VS)
    assert view.encoded == [] and view.version == Snapshot().version(VS)


def test_version_changes_only_when_content_changes() -> None:
    snapshot = Snapshot()
    empty = snapshot.version(VS)
    assert snapshot.apply(resources()) == {VS}
    v1 = snapshot.version(VS)
    assert v1 != empty
    assert snapshot.apply(resources()) == set()  # same content again
    assert snapshot.version(VS) == v1
    name = "ns/host-2"
    assert snapshot.apply([(VS, name, encode_resource(name, vs("changed.example.com")))]) == {VS}
    v2 = snapshot.version(VS)
    assert v2 != v1
    # putting the old content back gives the old version back
    snapshot.apply([(VS, name, encode_resource(name, vs("h2.example.com")))])
    assert snapshot.version(VS) == v1


def test_versions_are_per_type() -> None:
    snapshot = Snapshot()
    snapshot.apply(resources())
    se_version = snapshot.version(SE)
    snapshot.apply([(VS, "ns/extra", encode_resource("ns/extra", vs("extra.example.com")))])
    assert snapshot.version(SE) == se_version


def test_same_resources_in_any_order_give_the_same_version() -> None:
    items = resources(20)
    rng = random.Random(7)
    versions = set()
    for _ in range(5):
        shuffled = items[:]
        rng.shuffle(shuffled)
        snapshot = Snapshot()
        # also apply them in several batches
        for start in range(0, len(shuffled), 6):
            snapshot.apply(shuffled[start : start + 6])
        versions.add(snapshot.version(VS))
        assert snapshot.names(VS) == sorted(name for _, name, _ in items)
    assert len(versions) == 1


def test_history_does_not_matter_for_the_version() -> None:
    direct = Snapshot()
    direct.apply(resources(3))
    winding = Snapshot()
    winding.apply(resources(6))
    winding.apply([(VS, f"ns/host-{i}", None) for i in range(3, 6)])
    winding.apply([(VS, "ns/host-0", encode_resource("ns/host-0", vs("other.example.com")))])
    winding.apply(resources(1))
    assert winding.version(VS) == direct.version(VS)


def test_delete() -> None:
    snapshot = Snapshot()
    snapshot.apply(resources(3))
    before = snapshot.version(VS)
    assert snapshot.apply([(VS, "ns/host-1", None)]) == {VS}
    assert snapshot.names(VS) == ["ns/host-0", "ns/host-2"]
    assert snapshot.version(VS) != before
    assert [r.metadata.name for r in decode(snapshot.view(VS).encoded)] == ["ns/host-0", "ns/host-2"]
    # deleting what is not there changes nothing
    after = snapshot.version(VS)
    assert snapshot.apply([(VS, "ns/host-1", None), (SE, "ns/nothing", None)]) == set()
    assert snapshot.version(VS) == after
    snapshot.apply([(VS, "ns/host-0", None), (VS, "ns/host-2", None)])
    assert snapshot.version(VS) == Snapshot().version(VS)
    assert snapshot.view(VS).encoded == []


def test_view_is_consistent() -> None:
    snapshot = Snapshot()
    snapshot.apply(resources(4))
    view = snapshot.view(VS)
    assert view.version == snapshot.version(VS)
    assert view.changed_at > 0
    assert sorted(r.metadata.name for r in decode(view.encoded)) == snapshot.names(VS)


# ---------------------------------------------------------------- listeners


def test_listeners_get_the_changed_type_urls() -> None:
    snapshot = Snapshot()
    calls: list[set[str]] = []
    unsubscribe = snapshot.subscribe(calls.append)
    snapshot.apply(resources(2) + [(SE, "ns/se", encode_resource("ns/se", pb.ServiceEntry(hosts=["x"])))])
    assert calls == [{VS, SE}]
    snapshot.apply(resources(2))  # no change: no call
    assert calls == [{VS, SE}]
    snapshot.apply([(SE, "ns/se", None)])
    assert calls == [{VS, SE}, {SE}]
    unsubscribe()
    snapshot.apply([(VS, "ns/host-0", None)])
    assert len(calls) == 2
    unsubscribe()  # idempotent


def test_listener_may_read_the_snapshot() -> None:
    snapshot = Snapshot()
    seen: list[str] = []
    snapshot.subscribe(lambda urls: seen.extend(snapshot.version(u) for u in urls))
    snapshot.apply(resources(1))
    assert seen == [snapshot.version(VS)]
