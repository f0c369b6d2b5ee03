"""The MCP-over-xDS server, driven by a real gRPC ADS client on loopback, fed by a real Store."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from copilot.istio import kinds
from copilot.istio.kinds import IstioObject
from copilot.protos import istio_mcp_pb2 as mcp
from copilot.protos import istio_networking_pb2 as pb
from copilot.xds import mcp_server
from copilot.xds.encoding import MCP_RESOURCE_TYPE
from copilot.xds.mcp_server import McpServer
from copilot.xds.store import Store
from devtools.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

VS = kinds.VIRTUAL_SERVICE.collection
SE = kinds.SERVICE_ENTRY.collection
WAIT = 5.0  # bound on anything that should happen
QUIET = 0.4  # how long "nothing arrives" is watched for


def vs(host: str) -> pb.VirtualService:
    spec = pb.VirtualService(hosts=[host], gateways=["cf/ingress"])
    spec.http.add(name="/").route.add(destination=pb.Destination(host=host, subset="s"))
    return spec


def put(store: Store, name: str, host: str, kind: kinds.Kind = kinds.VIRTUAL_SERVICE) -> None:
    spec = vs(host) if kind is kinds.VIRTUAL_SERVICE else kind.message()
    if kind is kinds.SERVICE_ENTRY:
        spec.hosts.append(host)
    store.apply([IstioObject(kind, name, spec)])


class AdsClient:
    """One ADS stream: `send()` requests, `recv()` responses (bounded waits)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self._responses: queue.Queue[discovery_pb2.DiscoveryResponse | Exception] = queue.Queue()
        self._call = stub.StreamAggregatedResources(self._request_iter())
        threading.Thread(target=self._read, daemon=True).start()

    def _request_iter(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(EOFError("the server ended the stream"))
        except grpc.RpcError as error:
            self._responses.put(error)

    def send(self, type_url: str, *, nonce: str = "", version: str = "", error: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
        request.node.id = "istiod-test"
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put(request)

    def recv(self, timeout: float = WAIT) -> discovery_pb2.DiscoveryResponse:
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s") from None
        if isinstance(item, Exception):
            raise item
        return item

    def assert_quiet(self, within: float = QUIET) -> None:
        try:
            item = self._responses.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected response: {item}")

    def ack(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self.send(response.type_url, nonce=response.nonce, version=response.version_info)

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self.channel.close()


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    return sorted(mcp.Resource.FromString(r.value).metadata.name for r in response.resources)


class Nacks:
    """The on_nack observer: the type URLs reported, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, type_url: str) -> None:
        with self._lock:
            self.seen.append(type_url)

    def count(self, type_url: str) -> int:
        with self._lock:
            return self.seen.count(type_url)


@pytest.fixture
def store() -> Store:
    store = Store()
    put(store, "cf/a", "a.example.com")
    put(store, "cf/b", "b.example.com")
    return store


@pytest.fixture
def nack_observer() -> Nacks:
    return Nacks()


def serving(store: Store, **observers) -> McpServer:
    """An MCP server watching `store`, started on a free loopback port (released or not: the caller says)."""
    server = McpServer(**observers)
    store.watch(server.serve)
    server.start("127.0.0.1:0")
    return server


@pytest.fixture
def server(store: Store, nack_observer: Nacks) -> Iterator[McpServer]:
    server = serving(store, on_nack=nack_observer)
    store.release()
    yield server
    server.stop(grace=0)


@pytest.fixture
def client(server: McpServer) -> Iterator[AdsClient]:
    client = AdsClient(server.port)
    yield client
    client.close()


def test_first_request_gets_the_full_state_even_with_an_unknown_nonce(client: AdsClient, store: Store) -> None:
    client.send(VS, nonce="made-up-nonce-42", version="whatever")
    response = client.recv()
    assert response.type_url == VS
    assert response.version_info == store.version(kinds.VIRTUAL_SERVICE)
    assert response.nonce
    assert names(response) == ["cf/a", "cf/b"]


def test_resources_are_mcp_resources_wrapping_istio_specs(client: AdsClient) -> None:
    client.send(VS)
    response = client.recv()
    by_name = {}
    for wrapped in response.resources:
        assert wrapped.type_url == MCP_RESOURCE_TYPE
        resource = mcp.Resource()
        assert wrapped.Unpack(resource)
        spec = pb.VirtualService()
        assert resource.body.Unpack(spec)
        assert resource.metadata.version
        by_name[resource.metadata.name] = spec
    assert by_name == {"cf/a": vs("a.example.com"), "cf/b": vs("b.example.com")}
    assert all("/" in name for name in by_name)  # namespace/name


def test_unknown_type_gets_an_empty_response(client: AdsClient) -> None:
    client.send("networking.istio.io/v1/Sidecar")
    response = client.recv()
    assert response.type_url == "networking.istio.io/v1/Sidecar"
    assert list(response.resources) == []
    assert response.nonce


def test_ack_gets_no_new_response(client: AdsClient) -> None:
    client.send(VS)
    client.ack(client.recv())
    client.assert_quiet()


def test_change_is_pushed_to_subscribed_types_only(client: AdsClient, store: Store) -> None:
    client.send(VS)
    first = client.recv()
    client.ack(first)
    put(store, "cf/c", "c.example.com")
    pushed = client.recv()
    assert pushed.type_url == VS
    assert names(pushed) == ["cf/a", "cf/b", "cf/c"]
    assert pushed.version_info == store.version(kinds.VIRTUAL_SERVICE) != first.version_info
    assert pushed.nonce != first.nonce
    client.ack(pushed)
    # ServiceEntries were never asked for: nothing is pushed for them
    put(store, "cf/se", "se.example.com", kinds.SERVICE_ENTRY)
    client.assert_quiet()


def test_deletion_is_pushed(client: AdsClient, store: Store) -> None:
    client.send(VS)
    client.ack(client.recv())
    store.apply([], [(kinds.VIRTUAL_SERVICE, "cf/a")])
    assert names(client.recv()) == ["cf/b"]


def test_an_apply_without_change_pushes_nothing(client: AdsClient, store: Store) -> None:
    client.send(VS)
    client.ack(client.recv())
    put(store, "cf/a", "a.example.com")  # same content
    client.assert_quiet()


def test_a_burst_of_changes_ends_at_the_latest_state(client: AdsClient, store: Store) -> None:
    client.send(VS)
    client.ack(client.recv())
    for i in range(20):
        put(store, f"cf/burst-{i}", f"burst-{i}.example.com")
    final = store.version(kinds.VIRTUAL_SERVICE)
    seen = []
    while not seen or seen[-1].version_info != final:
        response = client.recv()
        client.ack(response)
        seen.append(response)
    assert len(seen) <= 20
    assert len(names(seen[-1])) == 22
    client.assert_quiet()


def test_stale_ack_is_ignored(client: AdsClient, store: Store) -> None:
    client.send(VS)
    first = client.recv()
    put(store, "cf/c", "c.example.com")
    second = client.recv()
    client.ack(first)  # ACK of an older response: no answer
    client.assert_quiet()
    client.ack(second)
    client.assert_quiet()


def test_request_without_nonce_gets_the_state_again(client: AdsClient) -> None:
    client.send(VS)
    first = client.recv()
    client.ack(first)
    client.send(VS)  # e.g. istiod re-subscribing
    again = client.recv()
    assert again.version_info == first.version_info
    assert names(again) == names(first)


def test_nack_is_logged_and_not_answered(client: AdsClient, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="copilot.xds.mcp_server")
    client.send(VS)
    response = client.recv()
    client.send(VS, nonce=response.nonce, version="", error="VirtualService cf/a: invalid host")
    client.assert_quiet(0.6)  # no resend loop
    [record] = [r for r in caplog.records if r.getMessage() == "istiod rejected config"]
    assert record.error == "VirtualService cf/a: invalid host"  # type: ignore[attr-defined]
    assert record.type_url == VS  # type: ignore[attr-defined]
    # the next change is still pushed
    put(store, "cf/c", "c.example.com")
    assert names(client.recv()) == ["cf/a", "cf/b", "cf/c"]


def test_a_nack_is_reported_and_logged_once_per_rejected_response(
    client: AdsClient, store: Store, nack_observer: Nacks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="copilot.xds.mcp_server")
    client.send(VS)
    first = client.recv()
    client.ack(first)
    put(store, "cf/c", "c.example.com")
    second = client.recv()
    client.send(VS, nonce=second.nonce, version=first.version_info, error="VirtualService cf/c: port out of range")
    wait_until(lambda: nack_observer.count(VS) == 1, timeout=WAIT, message="the NACK reported")
    # istiod repeating its NACK of the same response: neither reported nor logged again. The request
    # after it (answered) shows the server has read past it.
    client.send(VS, nonce=second.nonce, version=first.version_info, error="VirtualService cf/c: port out of range")
    client.send(SE)
    assert client.recv().type_url == SE
    assert nack_observer.seen == [VS]
    [record] = [r for r in caplog.records if r.getMessage() == "istiod rejected config"]
    assert record.error == "VirtualService cf/c: port out of range"  # type: ignore[attr-defined]
    assert (record.type_url, record.nonce) == (VS, second.nonce)  # type: ignore[attr-defined]
    assert record.rejected_version == second.version_info  # type: ignore[attr-defined]
    assert record.kept_version == first.version_info  # type: ignore[attr-defined]
    # The next response rejected is another NACK.
    put(store, "cf/d", "d.example.com")
    third = client.recv()
    client.send(VS, nonce=third.nonce, version=first.version_info, error="VirtualService cf/d: port out of range")
    wait_until(lambda: nack_observer.count(VS) == 2, timeout=WAIT, message="the second NACK reported")
    wait_until(lambda: len([r for r in caplog.records if r.getMessage() == "istiod rejected config"]) == 2, timeout=WAIT)
    assert nack_observer.seen == [VS, VS]


def test_several_types_on_one_stream(client: AdsClient, store: Store) -> None:
    put(store, "cf/se", "se.example.com", kinds.SERVICE_ENTRY)
    client.send(VS)
    client.send(SE)
    responses = {r.type_url: r for r in (client.recv(), client.recv())}
    assert set(responses) == {VS, SE}
    assert names(responses[SE]) == ["cf/se"]
    for response in responses.values():
        client.ack(response)
    store.apply([IstioObject(kinds.VIRTUAL_SERVICE, "cf/d", vs("d.example.com"))], [(kinds.SERVICE_ENTRY, "cf/se")])
    pushed = {r.type_url: r for r in (client.recv(), client.recv())}
    assert names(pushed[SE]) == []
    assert names(pushed[VS]) == ["cf/a", "cf/b", "cf/d"]


def everything(store: Store, tag: str) -> None:
    """One apply that moves every kind Copilot serves."""
    store.apply(IstioObject(kind, f"cf/{tag}", kind.message()) for kind in reversed(kinds.PUSH_ORDER))


def test_a_change_to_several_kinds_is_pushed_in_push_order(client: AdsClient, store: Store) -> None:
    everything(store, "first")
    for kind in reversed(kinds.PUSH_ORDER):  # subscribed in the opposite order
        client.send(kind.collection)
        client.ack(client.recv())
    everything(store, "second")
    pushed = [client.recv() for _ in kinds.PUSH_ORDER]
    assert [r.type_url for r in pushed] == [kind.collection for kind in kinds.PUSH_ORDER]
    assert all("cf/second" in names(r) for r in pushed)
    assert kinds.PUSH_ORDER.index(kinds.DESTINATION_RULE) < kinds.PUSH_ORDER.index(kinds.VIRTUAL_SERVICE)


def test_each_response_of_a_change_says_how_many_more_follow(client: AdsClient, store: Store) -> None:
    # istiod's build (change 8) keeps its debounce from pushing a change's first kinds alone while
    # the others are still on their way.
    everything(store, "first")
    for kind in kinds.PUSH_ORDER:
        client.send(kind.collection)
        client.ack(client.recv())
    everything(store, "second")
    pushed = [client.recv() for _ in kinds.PUSH_ORDER]
    count = len(kinds.PUSH_ORDER)
    assert [r.control_plane.identifier for r in pushed] == [f"{mcp_server.FOLLOWING}{n}" for n in reversed(range(count))]
    put(store, "cf/c", "c.example.com")  # one kind moves: nothing follows it
    assert client.recv().control_plane.identifier == f"{mcp_server.FOLLOWING}0"



def test_a_batch_announces_only_responses_it_sends(store: Store) -> None:
    # A request held for the first snapshot that gets no response (here a NACK) must not be counted: a
    # response announced and never sent would hold istiod's next full push until its debounce maximum.
    server = serving(store)  # not released: the requests wait for the first snapshot
    client = AdsClient(server.port)
    try:
        client.send(SE)
        client.send(VS, error="rejected")  # last in push order
        wait_until(lambda: server.stream_count() == 1, timeout=WAIT, message="the stream to be open")
        (stream,) = server._streams
        wait_until(lambda: len(stream.waiting) == 2, timeout=WAIT, message="both requests to wait")
        store.release()
        response = client.recv()
        assert response.type_url == SE
        assert response.control_plane.identifier == f"{mcp_server.FOLLOWING}0"
        client.assert_quiet(0.3)
    finally:
        client.close()
        server.stop(grace=0)

def test_removals_reach_istiod_routes_first_and_destination_rules_last(store: Store) -> None:
    """An app going away: its routes leave first, its ServiceEntry before its DestinationRule (else istiod can
    build the host's cluster without TLS to the instances for a moment), even when the stream is busy and
    the snapshots of the steps queue up behind each other (they are not folded past a barrier)."""
    gate = threading.Event()
    gate.set()
    server = serving(store, on_push=lambda type_url, count, since: gate.wait(WAIT))
    store.release()
    everything(store, "app")
    client = AdsClient(server.port)
    try:
        for kind in kinds.PUSH_ORDER:
            client.send(kind.collection)
            client.ack(client.recv())
        gate.clear()  # the stream's first push of the removal waits here while every later step queues
        store.apply([], [(kind, "cf/app") for kind in kinds.PUSH_ORDER])
        gate.set()
        pushed = [client.recv() for _ in kinds.PUSH_ORDER]
        assert [r.type_url for r in pushed] == [kind.collection for kind in kinds.REMOVAL_ORDER]
        assert not any("cf/app" in names(r) for r in pushed)
        client.assert_quiet()
    finally:
        client.close()
        server.stop(grace=0)


def test_a_removals_steps_are_one_batch(client: AdsClient, store: Store) -> None:
    # Each step of a removal is sent whole, in REMOVAL_ORDER, and every response says how many more of the
    # removal follow, so istiod (build change 8) takes the routes', ServiceEntry's and DestinationRule's
    # removal in one full push instead of one per kind.
    everything(store, "app")
    for kind in kinds.PUSH_ORDER:
        client.send(kind.collection)
        client.ack(client.recv())
    store.apply([], [(kind, "cf/app") for kind in kinds.PUSH_ORDER])
    pushed = [client.recv() for _ in kinds.PUSH_ORDER]
    assert [r.type_url for r in pushed] == [kind.collection for kind in kinds.REMOVAL_ORDER]
    count = len(kinds.PUSH_ORDER)
    assert [r.control_plane.identifier for r in pushed] == [f"{mcp_server.FOLLOWING}{n}" for n in reversed(range(count))]
    client.assert_quiet()


def test_every_stream_gets_the_push(server: McpServer, store: Store) -> None:
    clients = [AdsClient(server.port) for _ in range(3)]
    try:
        for c in clients:
            c.send(VS)
            c.ack(c.recv())
        assert server.stream_count() == 3
        put(store, "cf/c", "c.example.com")
        for c in clients:
            assert names(c.recv()) == ["cf/a", "cf/b", "cf/c"]
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: server.stream_count() == 0, timeout=5, message="the closed streams to end")


def test_requests_wait_for_the_first_snapshot_and_are_answered_in_push_order(store: Store) -> None:
    server = serving(store)  # the store is not released: its sources have not been read
    client = AdsClient(server.port)
    try:
        client.send(VS)
        client.send(SE)
        client.assert_quiet(0.6)
        put(store, "cf/c", "c.example.com")  # changes before the release are not pushed on their own
        client.assert_quiet(0.3)
        wait_until(lambda: server.stream_count() == 1, timeout=WAIT, message="the stream to be open")
        store.release()
        first, second = client.recv(), client.recv()
        assert (first.type_url, second.type_url) == (SE, VS)  # ServiceEntry before VirtualService
        assert names(second) == ["cf/a", "cf/b", "cf/c"]
        client.ack(first)
        client.ack(second)
        client.assert_quiet()
    finally:
        client.close()
        server.stop(grace=0)


def test_a_stream_closed_while_waiting_for_the_first_snapshot_ends(store: Store) -> None:
    server = serving(store)
    client = AdsClient(server.port)
    try:
        client.send(VS)
        wait_until(lambda: server.stream_count() == 1, timeout=WAIT, message="the stream to be open")
        client.close()
        wait_until(lambda: server.stream_count() == 0, timeout=WAIT, message="the waiting stream to end")
    finally:
        server.stop(grace=0)


def test_an_older_snapshot_arriving_late_is_ignored(client: AdsClient, server: McpServer, store: Store) -> None:
    old = store.snapshot()
    put(store, "cf/c", "c.example.com")
    server.serve(old)  # e.g. from an apply that lost the race to hand its snapshot over
    client.send(VS)
    assert names(client.recv()) == ["cf/a", "cf/b", "cf/c"]


def test_on_push_observer(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each push is observed as (type, resources, seconds since that type last changed; 0 if it never did)."""
    changed_at = store.snapshot().resources(VS).changed_at
    monkeypatch.setattr(mcp_server, "time", SimpleNamespace(monotonic=lambda: changed_at + 2.5))
    pushes: list[tuple[str, int, float]] = []
    server = serving(store, on_push=lambda *args: pushes.append(args))
    store.release()
    client = AdsClient(server.port)
    try:
        client.send(VS)
        client.recv()
        client.send(SE)  # a type that never changed
        client.recv()
        assert pushes == [(VS, 2, 2.5), (SE, 0, 0.0)]
    finally:
        client.close()
        server.stop(grace=0)


def test_stop_ends_open_streams(store: Store) -> None:
    server = serving(store)
    store.release()
    client = AdsClient(server.port)
    try:
        client.send(VS)
        client.recv()
        server.stop(grace=0)
        with pytest.raises((grpc.RpcError, EOFError)):
            client.recv()
    finally:
        client.close()


def test_start_on_a_taken_port_fails(server: McpServer) -> None:
    other = McpServer()
    with pytest.raises(OSError, match="cannot listen"):  # main() reports OSError as "cannot start"
        other.start(f"127.0.0.1:{server.port}")
    with pytest.raises(OSError, match="cannot listen"):
        other.start("256.1.1.1:5")
