"""Copilot's Cloud Controller API (`api.CloudControllerCopilot`) over real gRPC and mutual TLS on loopback,
driven with our own generated stubs (the cf-copilot field numbers): every RPC against the Views,
who may connect, what is refused and that a refusal changes nothing (oversized fields and messages
too), and BulkSync at ~50 MB."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError

from copilot.istio import kinds
from copilot.istio.builder import object_name
from copilot.model import CCRoute, CCState, HttpRoute, Instance, PortMapping, ProcessRoutes, ViewKind
from copilot.protos import cc_copilot_pb2 as api
from copilot.protos import cc_copilot_pb2_grpc as api_grpc
from copilot.publisher import Publisher
from copilot.settings import GatewaySettings
from copilot.sources.cc_api import MAX_BULK_SYNC_CHUNKS, MAX_MESSAGE_BYTES, CloudControllerCopilot, serve
from copilot.sources.cc_validation import MAX_BULK_ENTRIES, MAX_DIEGO_PROCESS_GUIDS, MAX_GUID_LENGTH
from copilot.views import Views
from copilot.xds.store import Store
from devtools.certs import make_ca

CHUNK = 64 * 1024
TIMEOUT = 10.0
SETTINGS = GatewaySettings(namespace="cf")
ISTIO_TYPES = [kinds.VIRTUAL_SERVICE, kinds.DESTINATION_RULE, kinds.SERVICE_ENTRY]


# ---------------------------------------------------------------- fixtures


@dataclass
class PKI:
    ca: Path  # signs Copilot's server certificate and the CC client certificate
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA Copilot does not trust
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("cc-pki")
    ca = make_ca(root, "cc-ca")
    other = make_ca(root / "other", "other-ca")
    server = ca.issue("copilot", root, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False)
    client = ca.issue("cloud-controller", root, server=False)
    stranger = other.issue("stranger", root / "other", server=False)
    return PKI(
        ca.cert_path, server.cert_path, server.key_path, client.cert_path, client.key_path, stranger.cert_path, stranger.key_path
    )


@dataclass
class Served:
    table: Views
    servicer: CloudControllerCopilot
    address: str
    changes: list[int]


def _serve(pki: PKI, table: Views, on_change) -> tuple[grpc.Server, CloudControllerCopilot, str]:
    servicer = CloudControllerCopilot(table.cc, on_change)
    server, port = serve(
        servicer,
        "127.0.0.1:0",
        cert=pki.server_cert.read_bytes(),
        key=pki.server_key.read_bytes(),
        client_ca=pki.ca.read_bytes(),
    )
    return server, servicer, f"127.0.0.1:{port}"


@pytest.fixture
def served(pki: PKI) -> Iterator[Served]:
    table, changes = Views(), []
    server, servicer, address = _serve(pki, table, lambda: changes.append(1))
    try:
        yield Served(table, servicer, address, changes)
    finally:
        server.stop(None)


def _channel(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
    )
    return grpc.secure_channel(address, credentials)


@pytest.fixture
def stub(served: Served, pki: PKI) -> Iterator[api_grpc.CloudControllerCopilotStub]:
    with _channel(served.address, pki.ca, pki.client_cert, pki.client_key) as channel:
        yield api_grpc.CloudControllerCopilotStub(channel)


# ---------------------------------------------------------------- helpers


def chunks(payload: bytes, size: int = CHUNK) -> Iterator[api.BulkSyncRequestChunk]:
    """As Cloud Controller sends a BulkSync: one serialized BulkSyncRequest cut into 64 KiB chunks."""
    for start in range(0, max(len(payload), 1), size):
        yield api.BulkSyncRequestChunk(chunk=payload[start : start + size])


def bulk_sync(stub, request: api.BulkSyncRequest, timeout: float = TIMEOUT) -> api.BulkSyncResponse:
    return stub.BulkSync(chunks(request.SerializeToString()), timeout=timeout)


def route(guid: str, host: str, path: str = "", internal: bool = False, vip: str = "") -> api.Route:
    return api.Route(guid=guid, host=host, path=path, internal=internal, vip=vip)


def mapping(route_guid: str, capi_guid: str, weight: int = 1) -> api.RouteMapping:
    return api.RouteMapping(capi_process_guid=capi_guid, route_guid=route_guid, route_weight=weight)


def association(capi_guid: str, *diego_guids: str) -> api.CapiDiegoProcessAssociation:
    return api.CapiDiegoProcessAssociation(capi_process_guid=capi_guid, diego_process_guids=list(diego_guids))


def upsert_route(stub, message: api.Route) -> None:
    stub.UpsertRoute(api.UpsertRouteRequest(route=message), timeout=TIMEOUT)


def upsert_association(stub, message: api.CapiDiegoProcessAssociation) -> None:
    request = api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=message)
    stub.UpsertCapiDiegoProcessAssociation(request, timeout=TIMEOUT)


def seed(stub) -> None:
    """Some CC state to prove a later refusal leaves it alone."""
    bulk_sync(
        stub,
        api.BulkSyncRequest(
            routes=[route("r1", "a.example.com"), route("r2", "b.example.com", "/api")],
            route_mappings=[mapping("r1", "c1", 2), mapping("r2", "c1")],
            capi_diego_process_associations=[association("c1", "c1-v1")],
        ),
    )


def instance(guid: str, address: str = "10.0.0.1", host_port: int = 61000) -> Instance:
    return Instance(guid, 0, f"{guid}-i0", "RUNNING", True, address, "10.255.0.9", False, (PortMapping(8080, host_port),))


# ---------------------------------------------------------------- every RPC


def test_health(stub) -> None:
    assert stub.Health(api.HealthRequest(), timeout=TIMEOUT).healthy is True


def test_upsert_route_adds_and_replaces(stub, served: Served) -> None:
    upsert_route(stub, route("r1", "a.example.com", "/v1"))
    assert served.table.cc.state().routes == {"r1": CCRoute("r1", "a.example.com", "/v1")}
    upsert_route(stub, route("r1", "b.example.com"))  # same guid: the route moves
    assert served.table.cc.state().routes == {"r1": CCRoute("r1", "b.example.com", "")}
    assert len(served.changes) == 2


def test_upsert_route_lower_cases_the_host(stub, served: Served) -> None:
    upsert_route(stub, route("r1", "My-App.Apps.EXAMPLE.com"))
    assert served.table.cc.state().routes["r1"].host == "my-app.apps.example.com"
    assert stub.ListCfRoutes(api.ListCfRoutesRequest(), timeout=TIMEOUT).routes == {"r1": "my-app.apps.example.com"}


def test_upsert_internal_route(stub, served: Served) -> None:
    upsert_route(stub, route("r1", "App.Apps.Internal", internal=True, vip="127.128.0.1"))
    assert served.table.cc.state().routes == {"r1": CCRoute("r1", "app.apps.internal", "", True, "127.128.0.1")}
    assert sorted(served.table.keys(ViewKind.INTERNAL_HOST)) == ["app.apps.internal"]
    assert served.table.internal_service("app.apps.internal").destinations == []  # nothing mapped yet
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c1")), timeout=TIMEOUT)
    upsert_association(stub, association("c1", "c1-v1"))
    service = served.table.internal_service("app.apps.internal")
    assert (service.vip, [d.process_guid for d in service.destinations]) == ("127.128.0.1", ["c1-v1"])
    assert sorted(served.table.keys(ViewKind.HOST)) == []  # never an external host


def test_delete_route(stub, served: Served) -> None:
    upsert_route(stub, route("r1", "a.example.com"))
    upsert_route(stub, route("r2", "b.example.com"))
    stub.DeleteRoute(api.DeleteRouteRequest(guid="r1"), timeout=TIMEOUT)
    assert set(served.table.cc.state().routes) == {"r2"}
    stub.DeleteRoute(api.DeleteRouteRequest(guid="unknown"), timeout=TIMEOUT)  # deleting nothing is fine
    assert set(served.table.cc.state().routes) == {"r2"}


def test_map_and_unmap_route(stub, served: Served) -> None:
    upsert_route(stub, route("r1", "a.example.com"))
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c1", 3)), timeout=TIMEOUT)
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c2", 128)), timeout=TIMEOUT)
    assert served.table.cc.state().mappings == {("r1", "c1"): 3, ("r1", "c2"): 128}
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c1", 5)), timeout=TIMEOUT)  # re-map: new weight
    assert served.table.cc.state().mappings == {("r1", "c1"): 5, ("r1", "c2"): 128}
    stub.UnmapRoute(api.UnmapRouteRequest(route_mapping=mapping("r1", "c1", 5)), timeout=TIMEOUT)
    assert served.table.cc.state().mappings == {("r1", "c2"): 128}
    stub.UnmapRoute(api.UnmapRouteRequest(route_mapping=mapping("r1", "c9")), timeout=TIMEOUT)  # not mapped: no-op
    assert served.table.cc.state().mappings == {("r1", "c2"): 128}


def test_mapped_route_serves_the_associated_diego_process(stub, served: Served) -> None:
    served.table.bbs.upsert_process("c1-v1", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),)))
    served.table.bbs.upsert_instance(0, instance("c1-v1"))
    upsert_route(stub, route("r1", "A.example.com", "/api"))
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c1", 7)), timeout=TIMEOUT)
    upsert_association(stub, association("c1", "c1-v1"))
    paths = served.table.host_routes("a.example.com").paths
    assert [(d.process_guid, d.weight, [(b.address, b.port) for b in d.backends]) for d in paths["/api"]] == [
        ("c1-v1", 7, [("10.0.0.1", 61000)])  # relative: the mapping's weight
    ]


def test_upsert_and_delete_association(stub, served: Served) -> None:
    upsert_association(stub, association("c1", "c1-v2", "c1-v1", "c1-v1"))
    assert served.table.cc.state().associations == {"c1": ("c1-v1", "c1-v2")}  # de-duplicated, sorted
    upsert_association(stub, association("c1", "c1-v2"))  # a rolling deploy finished
    upsert_association(stub, association("c2", "c2-v1"))
    assert served.table.cc.state().associations == {"c1": ("c1-v2",), "c2": ("c2-v1",)}
    request = api.DeleteCapiDiegoProcessAssociationRequest(capi_process_guid="c1")
    stub.DeleteCapiDiegoProcessAssociation(request, timeout=TIMEOUT)
    assert served.table.cc.state().associations == {"c2": ("c2-v1",)}


def test_list_rpcs_read_the_table(stub, served: Served) -> None:
    seed(stub)
    assert stub.ListCfRoutes(api.ListCfRoutesRequest(), timeout=TIMEOUT).routes == {
        "r1": "a.example.com",
        "r2": "b.example.com",
    }
    listed = stub.ListCfRouteMappings(api.ListCfRouteMappingsRequest(), timeout=TIMEOUT).route_mappings
    assert sorted((m.route_guid, m.capi_process_guid, m.route_weight) for m in listed.values()) == [
        ("r1", "c1", 2),
        ("r2", "c1", 1),
    ]
    assert len(set(listed)) == 2  # one key per mapping
    associations = stub.ListCapiDiegoProcessAssociations(api.ListCapiDiegoProcessAssociationsRequest(), timeout=TIMEOUT)
    assert {k: list(v.diego_process_guids) for k, v in associations.capi_diego_process_associations.items()} == {"c1": ["c1-v1"]}


def test_list_rpcs_of_an_empty_table(stub) -> None:
    assert dict(stub.ListCfRoutes(api.ListCfRoutesRequest(), timeout=TIMEOUT).routes) == {}
    assert dict(stub.ListCfRouteMappings(api.ListCfRouteMappingsRequest(), timeout=TIMEOUT).route_mappings) == {}
    response = stub.ListCapiDiegoProcessAssociations(api.ListCapiDiegoProcessAssociationsRequest(), timeout=TIMEOUT)
    assert dict(response.capi_diego_process_associations) == {}


# ---------------------------------------------------------------- BulkSync


@pytest.mark.parametrize("chunk_size", [1, 7, CHUNK])
def test_bulk_sync_reassembles_chunks(stub, served: Served, chunk_size: int) -> None:
    request = api.BulkSyncRequest(
        routes=[route(f"r{i}", f"app-{i}.example.com", "/p" if i % 2 else "") for i in range(40)],
        route_mappings=[mapping(f"r{i}", f"c{i % 5}", i % 128 + 1) for i in range(40)],
        capi_diego_process_associations=[association(f"c{i}", f"c{i}-v1", f"c{i}-v2") for i in range(5)],
    )
    payload = request.SerializeToString()
    response = stub.BulkSync(chunks(payload, chunk_size), timeout=TIMEOUT)
    assert response.total_bytes_received == len(payload)
    state = served.table.cc.state()
    assert len(state.routes) == 40 and state.routes["r1"] == CCRoute("r1", "app-1.example.com", "/p")
    assert state.mappings[("r39", "c4")] == 40
    assert state.associations["c3"] == ("c3-v1", "c3-v2")
    assert served.servicer.bulk_synced.is_set()


def test_bulk_sync_of_many_64k_chunks(stub, served: Served) -> None:
    request = api.BulkSyncRequest(routes=[route(f"{i:036d}", f"app-{i}.apps.example.com") for i in range(5000)])
    payload = request.SerializeToString()
    assert len(payload) > 4 * CHUNK
    assert bulk_sync(stub, request).total_bytes_received == len(payload)
    assert len(served.table.cc.state().routes) == 5000


def test_bulk_sync_replaces_the_cc_state(stub, served: Served) -> None:
    seed(stub)
    assert sorted(served.table.keys(ViewKind.HOST)) == ["a.example.com", "b.example.com"]
    bulk_sync(
        stub,
        api.BulkSyncRequest(
            routes=[route("r2", "b.example.com", "/api"), route("r3", "c.example.com")],
            route_mappings=[mapping("r3", "c2", 4)],
            capi_diego_process_associations=[association("c2", "c2-v1")],
        ),
    )
    assert served.table.cc.state() == CCState(
        {"r2": CCRoute("r2", "b.example.com", "/api"), "r3": CCRoute("r3", "c.example.com")},
        {("r3", "c2"): 4},
        {"c2": ("c2-v1",)},
    )
    assert sorted(served.table.keys(ViewKind.HOST)) == ["b.example.com", "c.example.com"]  # r1's host is gone
    bulk_sync(stub, api.BulkSyncRequest())  # an empty sync: Cloud Controller routes nothing through Istio
    assert served.table.cc.state() == CCState()
    assert sorted(served.table.keys(ViewKind.HOST)) == []


def test_bulk_sync_is_atomic_for_readers(stub, served: Served) -> None:
    def state(tag: str) -> api.BulkSyncRequest:
        return api.BulkSyncRequest(
            routes=[route(f"{tag}{i}", f"{tag}{i}.example.com") for i in range(3000)],
            route_mappings=[mapping(f"{tag}{i}", f"{tag}c{i}") for i in range(3000)],
            capi_diego_process_associations=[association(f"{tag}c{i}", f"{tag}d{i}") for i in range(3000)],
        )

    bulk_sync(stub, state("old"))
    old = served.table.cc.state()
    seen: list[CCState] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(served.table.cc.state())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        bulk_sync(stub, state("new"))
    finally:
        stop.set()
        reader.join()
    new = served.table.cc.state()
    assert len(new.routes) == 3000 and all(guid.startswith("new") for guid in new.routes)
    assert seen and all(s in (old, new) for s in seen)  # never half of each


def _random_bytes(size: int, seed: int = 4) -> bytes:
    payload = random.Random(seed).randbytes(size)
    with pytest.raises(DecodeError):  # the premise: this is not a BulkSyncRequest
        api.BulkSyncRequest.FromString(payload)
    return payload


def test_bulk_sync_of_random_bytes_is_refused_and_state_and_istio_objects_stay(pki: PKI) -> None:
    table, snapshot = Views(), Store()
    publisher = Publisher(table, snapshot, SETTINGS)
    table.bbs.upsert_process("c1-v1", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),)))
    table.bbs.upsert_instance(0, instance("c1-v1"))
    server, servicer, address = _serve(pki, table, publisher.publish)
    try:
        with _channel(address, pki.ca, pki.client_cert, pki.client_key) as channel:
            stub = api_grpc.CloudControllerCopilotStub(channel)
            bulk_sync(
                stub,
                api.BulkSyncRequest(
                    routes=[route("r1", "a.example.com"), route("r2", "b.example.com")],
                    route_mappings=[mapping("r1", "c1"), mapping("r2", "c1")],
                    capi_diego_process_associations=[association("c1", "c1-v1")],
                ),
            )
            before = table.cc.state()
            versions = {t: snapshot.version(t) for t in ISTIO_TYPES}
            names = {t: snapshot.names(t) for t in ISTIO_TYPES}
            assert f"cf/{object_name('b.example.com')}" in names[kinds.VIRTUAL_SERVICE]

            payload = _random_bytes(200_000)
            with pytest.raises(grpc.RpcError) as refused:
                stub.BulkSync(chunks(payload), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "chunk" in refused.value.details()

            assert table.cc.state() == before
            publisher.publish()
            assert {t: snapshot.version(t) for t in ISTIO_TYPES} == versions
            assert {t: snapshot.names(t) for t in ISTIO_TYPES} == names
            assert stub.Health(api.HealthRequest(), timeout=TIMEOUT).healthy  # the server is fine
    finally:
        server.stop(None)


def test_random_bytes_before_any_bulk_sync_do_not_count_as_one(stub, served: Served) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.BulkSync(chunks(_random_bytes(10_000, seed=9)), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not served.servicer.bulk_synced.is_set()
    assert served.changes == []


def test_bulk_sync_with_one_invalid_entry_changes_nothing(stub, served: Served) -> None:
    seed(stub)
    before, changes = served.table.cc.state(), len(served.changes)
    request = api.BulkSyncRequest(
        routes=[route("r7", "ok.example.com"), route("r8", "not a host")],
        route_mappings=[mapping("r7", "c7")],
    )
    with pytest.raises(grpc.RpcError) as refused:
        bulk_sync(stub, request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("routes[1].host:")
    assert served.table.cc.state() == before
    assert len(served.changes) == changes


def test_bulk_sync_of_about_50_mb(stub, served: Served) -> None:
    n = 150_000
    request = api.BulkSyncRequest()
    for i in range(n):
        route_guid, capi_guid = f"{i:08x}-0000-4000-8000-{i:012x}", f"{i:08x}-1111-4000-8000-{i:012x}"
        request.routes.add(guid=route_guid, host=f"app-{i:06d}.apps.internal-domain.example.com", path="/api")
        request.route_mappings.add(capi_process_guid=capi_guid, route_guid=route_guid, route_weight=i % 128 + 1)
        request.capi_diego_process_associations.add(
            # a Diego process guid is "<CC process guid>-<CC process version>", the version a guid too
            capi_process_guid=capi_guid,
            diego_process_guids=[f"{capi_guid}-{i:08x}-2222-4000-8000-{v:012x}" for v in (1, 2)],
        )
    payload = request.SerializeToString()
    assert 50_000_000 < len(payload) < 60_000_000
    response = stub.BulkSync(chunks(payload), timeout=120)
    assert response.total_bytes_received == len(payload)
    state = served.table.cc.state()
    assert (len(state.routes), len(state.mappings), len(state.associations)) == (n, n, n)
    last = f"{n - 1:08x}-0000-4000-8000-{n - 1:012x}"
    assert state.routes[last] == CCRoute(last, f"app-{n - 1:06d}.apps.internal-domain.example.com", "/api")


# ---------------------------------------------------------------- validation: InvalidArgument naming the field

INVALID = [
    ("UpsertRoute", api.UpsertRouteRequest(route=route("", "a.example.com")), "route.guid"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "")), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(), "route.guid"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "under_score.example.com")), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a..example.com")), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "-a.example.com")), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.example.com\n.")), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.example.com", "api")), "route.path"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.example.com", "/a?b")), "route.path"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.apps.internal", internal=True)), "route.vip"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.apps.internal", internal=True, vip="x")), "route.vip"),
    ("DeleteRoute", api.DeleteRouteRequest(), "guid"),
    ("MapRoute", api.MapRouteRequest(route_mapping=mapping("r1", "c1", 0)), "route_mapping.route_weight"),
    ("MapRoute", api.MapRouteRequest(route_mapping=mapping("r1", "c1", 129)), "route_mapping.route_weight"),
    ("MapRoute", api.MapRouteRequest(route_mapping=mapping("", "c1")), "route_mapping.route_guid"),
    ("MapRoute", api.MapRouteRequest(route_mapping=mapping("r1", "")), "route_mapping.capi_process_guid"),
    ("UnmapRoute", api.UnmapRouteRequest(route_mapping=mapping("", "c1")), "route_mapping.route_guid"),
    ("UnmapRoute", api.UnmapRouteRequest(route_mapping=mapping("r1", "c1", 0)), "route_mapping.route_weight"),
    (
        "UpsertCapiDiegoProcessAssociation",
        api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association("c1")),
        "capi_diego_process_association.diego_process_guids",
    ),
    (
        "UpsertCapiDiegoProcessAssociation",
        api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association("c1", "c1-v1", "")),
        "capi_diego_process_association.diego_process_guids",
    ),
    (
        "UpsertCapiDiegoProcessAssociation",
        api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association("", "c1-v1")),
        "capi_diego_process_association.capi_process_guid",
    ),
    ("DeleteCapiDiegoProcessAssociation", api.DeleteCapiDiegoProcessAssociationRequest(), "capi_process_guid"),
    # oversized fields, each within the message limit
    ("UpsertRoute", api.UpsertRouteRequest(route=route("g" * 1_000_000, "a.example.com")), "route.guid"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a" * 1_000_000)), "route.host"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.example.com", "/a" * 1000)), "route.path"),
    ("UpsertRoute", api.UpsertRouteRequest(route=route("r9", "a.apps.internal", internal=True, vip="1" * 100)), "route.vip"),
    ("DeleteRoute", api.DeleteRouteRequest(guid="r" * 257), "guid"),
    ("MapRoute", api.MapRouteRequest(route_mapping=mapping("r" * 257, "c1")), "route_mapping.route_guid"),
    ("UnmapRoute", api.UnmapRouteRequest(route_mapping=mapping("r1", "c" * 257)), "route_mapping.capi_process_guid"),
    (
        "UpsertCapiDiegoProcessAssociation",
        api.UpsertCapiDiegoProcessAssociationRequest(
            capi_diego_process_association=association("c1", *(f"c1-{i}" for i in range(MAX_DIEGO_PROCESS_GUIDS + 1)))
        ),
        "capi_diego_process_association.diego_process_guids",
    ),
    (
        "UpsertCapiDiegoProcessAssociation",
        api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association("c1", "d" * 257)),
        "capi_diego_process_association.diego_process_guids",
    ),
    ("DeleteCapiDiegoProcessAssociation", api.DeleteCapiDiegoProcessAssociationRequest(capi_process_guid="c" * 257),
     "capi_process_guid"),
]


@pytest.mark.parametrize(
    ("rpc", "request_message", "field"), INVALID, ids=[f"{r}-{f}-{i}" for i, (r, _, f) in enumerate(INVALID)]
)
def test_invalid_request_is_refused_naming_the_field_and_changes_nothing(
    stub, served: Served, rpc, request_message, field
) -> None:
    seed(stub)
    before, changes = served.table.cc.state(), len(served.changes)
    with pytest.raises(grpc.RpcError) as refused:
        getattr(stub, rpc)(request_message, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}:"), refused.value.details()
    assert served.table.cc.state() == before
    assert len(served.changes) == changes


def test_a_message_over_the_limit_is_refused_and_changes_nothing(stub, served: Served) -> None:
    """A 15 MB guid, and an association of 400,000 guids (the sizes observed), are refused by gRPC itself."""
    seed(stub)
    before, changes = served.table.cc.state(), len(served.changes)
    oversized = [
        lambda: upsert_route(stub, route("g" * (15 << 20), "a.example.com")),
        lambda: upsert_association(stub, association("c1", *(f"{i:036x}" for i in range(400_000)))),
        lambda: upsert_route(stub, route("g" * MAX_MESSAGE_BYTES, "a.example.com")),
    ]
    for call in oversized:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert served.table.cc.state() == before
    assert len(served.changes) == changes
    assert stub.Health(api.HealthRequest(), timeout=TIMEOUT).healthy


def test_the_largest_valid_requests_fit_the_message_limit(stub, served: Served) -> None:
    diego_guids = [f"{i:0{MAX_GUID_LENGTH}d}" for i in range(MAX_DIEGO_PROCESS_GUIDS)]
    upsert_association(stub, association("c" * MAX_GUID_LENGTH, *diego_guids))
    assert served.table.cc.state().associations["c" * MAX_GUID_LENGTH] == tuple(diego_guids)
    upsert_route(stub, route("g" * MAX_GUID_LENGTH, ".".join(["a" * 63] * 3 + ["a" * 61]), "/a" * 512))
    assert len(served.table.cc.state().routes) == 1


def test_bulk_sync_with_an_oversized_field_or_list_is_refused_naming_it(stub, served: Served) -> None:
    seed(stub)
    before, changes = served.table.cc.state(), len(served.changes)
    big_guid = api.BulkSyncRequest(routes=[route("r1", "a.example.com"), route("g" * (15 << 20), "b.example.com")])
    too_many = b"\x12\x00" * (MAX_BULK_ENTRIES + 1)  # MAX_BULK_ENTRIES + 1 (empty) routes
    cases = [
        (chunks(big_guid.SerializeToString()), f"routes[1].guid: {15 << 20} characters, more than {MAX_GUID_LENGTH}"),
        (chunks(too_many), f"routes: {MAX_BULK_ENTRIES + 1} entries, more than {MAX_BULK_ENTRIES}"),
    ]
    for request_chunks, details in cases:
        with pytest.raises(grpc.RpcError) as refused:
            stub.BulkSync(request_chunks, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == details
    assert served.table.cc.state() == before
    assert len(served.changes) == changes


class _Aborted(Exception):
    pass


class _Context:
    """What BulkSync uses of a grpc.ServicerContext."""

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Aborted(code, details)


def test_bulk_sync_of_too_many_chunks_is_refused() -> None:
    """An endless stream of empty chunks ends (the byte bound alone would never be reached)."""
    table = Views()
    servicer = CloudControllerCopilot(table.cc, lambda: None)
    empty = api.BulkSyncRequestChunk()
    sent = 0

    def endless():
        nonlocal sent
        while True:
            sent += 1
            yield empty

    with pytest.raises(_Aborted) as aborted:
        servicer.BulkSync(endless(), _Context())
    assert aborted.value.args == (grpc.StatusCode.RESOURCE_EXHAUSTED, f"chunk: bulk sync exceeds {MAX_BULK_SYNC_CHUNKS} chunks")
    assert sent == MAX_BULK_SYNC_CHUNKS + 1
    assert not servicer.bulk_synced.is_set()


@pytest.mark.parametrize("weight", [1, 128])
def test_weight_bounds_are_accepted(stub, served: Served, weight: int) -> None:
    stub.MapRoute(api.MapRouteRequest(route_mapping=mapping("r1", "c1", weight)), timeout=TIMEOUT)
    assert served.table.cc.state().mappings == {("r1", "c1"): weight}


# ---------------------------------------------------------------- who may connect


def _refused_clients(pki: PKI) -> dict[str, tuple]:
    return {
        "no client certificate": (pki.ca, None, None),
        "client certificate from another CA": (pki.ca, pki.stranger_cert, pki.stranger_key),
    }


@pytest.mark.parametrize("client", ["no client certificate", "client certificate from another CA"])
def test_untrusted_clients_are_refused_and_change_nothing(stub, served: Served, pki: PKI, client: str) -> None:
    seed(stub)
    before, changes = served.table.cc.state(), len(served.changes)
    ca, cert, key = _refused_clients(pki)[client]
    with _channel(served.address, ca, cert, key) as channel:
        intruder = api_grpc.CloudControllerCopilotStub(channel)
        calls = [
            lambda: intruder.Health(api.HealthRequest(), timeout=5),
            lambda: intruder.UpsertRoute(api.UpsertRouteRequest(route=route("evil", "evil.example.com")), timeout=5),
            lambda: intruder.DeleteRoute(api.DeleteRouteRequest(guid="r1"), timeout=5),
            lambda: intruder.BulkSync(chunks(api.BulkSyncRequest().SerializeToString()), timeout=5),
            lambda: intruder.ListCfRoutes(api.ListCfRoutesRequest(), timeout=5),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), refused.value
    assert served.table.cc.state() == before
    assert len(served.changes) == changes
    assert stub.Health(api.HealthRequest(), timeout=TIMEOUT).healthy  # the trusted client still gets in


def test_plaintext_client_is_refused(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel, pytest.raises(grpc.RpcError) as refused:
        api_grpc.CloudControllerCopilotStub(channel).Health(api.HealthRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
