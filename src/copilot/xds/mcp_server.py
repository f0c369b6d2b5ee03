"""The Aggregated Discovery Service (state of the world) that istiod's `xds://` config source dials.

The server is handed immutable snapshots (`serve(snapshot)`, wired to Store.watch) and answers every
stream from the newest one it holds; it never calls back into the store. Every type istiod asks for is
answered (empty when we hold none), each response carries the full set for its type, and a new snapshot
is pushed to every stream for each subscribed type whose version moved, in kinds.PUSH_ORDER; queued
snapshots are folded into the newest, but never past a barrier (removals go kind by kind, REMOVAL_ORDER,
each step sent whole, all steps of one removal in one batch).

Readiness: until the first snapshot arrives, a stream's requests are kept unanswered (istiod waits; a
restarted Copilot never tells it that the world is empty); the first snapshot answers them, in push
order. A response istiod rejects (a NACK: a request with error_detail) is not answered; it is logged
with istiod's message and reported to `on_nack`, once per rejected response (type and nonce) on a
stream. Pushes are reported to `on_push`. Metrics are the caller's (main wires them): this package
knows nothing of copilot.metrics.

Batches: the responses one snapshot pushes go back to back, and each says in its control_plane
identifier how many more of them follow (FOLLOWING, then a number). istiod reads one response after
another; the release's istiod build (scripts/build-go-tools, change 8) does not take the time between
them for quiet while more are announced, so a change of several kinds is one push, a removal's steps
too (the routes, then the ServiceEntry, then the DestinationRule: one push, not one per kind). Stock
istiod ignores the field.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from copilot.istio.kinds import PUSH_ORDER
from copilot.xds.encoding import encode_response, length_delimited
from copilot.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_CLOSE = object()
_RANK = {kind.collection: rank for rank, kind in enumerate(PUSH_ORDER)}

# DiscoveryResponse.control_plane (field 6), ControlPlane.identifier (field 1). The Go side of this
# string is in scripts/build-go-tools (patch_istio_debounce_config_source): keep them equal.
FOLLOWING = "copilot.cloudfoundry.org/responses-following="


def following(count: int) -> bytes:
    """The control_plane field that tells istiod `count` more responses of this batch follow."""
    return length_delimited(6, length_delimited(1, f"{FOLLOWING}{count}".encode()))


PushObserver = Callable[[str, int, float], None]  # (type_url, resource count, seconds since that type changed)
NackObserver = Callable[[str], None]  # (type_url)


def push_order(type_urls: Iterable[str]) -> list[str]:
    """Type URLs in kinds.PUSH_ORDER; types Copilot holds none of (always empty) after, by name."""
    return sorted(type_urls, key=lambda url: (_RANK.get(url, len(_RANK)), url))


class _Stream:
    """One ADS stream: the snapshot it answers from, what each subscribed type was last sent, and the nonce."""

    def __init__(self, peer: str, snapshot: Snapshot | None) -> None:
        self.peer = peer
        self.snapshot = snapshot
        self.waiting: dict[str, discovery_pb2.DiscoveryRequest] = {}  # requests made before the first snapshot
        self.sent_version: dict[str, str] = {}
        self.sent_nonce: dict[str, str] = {}
        self.nacked_nonce: dict[str, str] = {}  # the last response of each type istiod rejected
        self.nonces = itertools.count(1)
        self.inbox: queue.Queue[object] = queue.Queue()


# istiod pings its config source every 30 s (its GRPC_KEEPALIVE_INTERVAL) on a stream that can stay quiet
# for hours. gRPC's server default takes a ping without data at most every 5 minutes and answers the third
# early one with GOAWAY "too_many_pings": istiod reconnected, and re-read every object, every few idle
# minutes (every 100,000 of each kind at 100,000 routes). Accepted as often as istiod's own server accepts
# its clients' pings (half its interval).
MIN_PING_INTERVAL_MS = 15_000

# A removal's steps (Store.apply: one snapshot per kind of kinds.REMOVAL_ORDER, every one but the last a
# barrier) are handed over one right after the other; a stream waits this long for the next step of a
# barrier, and takes at most MAX_STEPS snapshots into one batch.
STEP_WAIT = 2.0
MAX_STEPS = 16


class McpServer:
    """Serves the snapshots it is handed over ADS. `start()` binds; `stop()` ends every stream."""

    def __init__(self, on_push: PushObserver | None = None, on_nack: NackObserver | None = None) -> None:
        self._on_push = on_push
        self._on_nack = on_nack
        self._snapshot: Snapshot | None = None
        self._server: grpc.Server | None = None
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self.port = 0

    def serve(self, snapshot: Snapshot) -> None:
        """Takes a newer snapshot and hands it to every stream (an older one, arriving late, is ignored)."""
        with self._lock:
            if self._snapshot is not None and snapshot.serial <= self._snapshot.serial:
                return
            self._snapshot = snapshot
            streams = list(self._streams)
        for stream in streams:
            stream.inbox.put(snapshot)

    def start(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="mcp"),
            options=[
                ("grpc.max_send_message_length", 1 << 30),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.so_reuseport", 0),  # a second Copilot on the same port must fail, not share istiod's streams
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ],
        )
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream_aggregated_resources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=lambda raw: raw,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"StreamAggregatedResources": handler}),))
        try:  # grpcio reports a failed bind as RuntimeError (older releases returned port 0)
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._server = server
        return self.port

    def stop(self, grace: float = 0.5) -> None:
        if self._server is None:
            return
        with self._lock:
            for stream in self._streams:
                stream.inbox.put(_CLOSE)
        self._server.stop(grace).wait()
        self._server = None

    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---- internals
    def _stream_aggregated_resources(self, requests: Iterator[discovery_pb2.DiscoveryRequest], context) -> Iterator[bytes]:
        with self._lock:
            stream = _Stream(context.peer(), self._snapshot)
            self._streams.add(stream)
        log.info("mcp stream opened", extra={"peer": stream.peer})
        if stream.snapshot is None:
            log.info("holding istiod's requests until the first snapshot", extra={"peer": stream.peer})

        def read() -> None:
            try:
                for request in requests:
                    stream.inbox.put(request)
            except grpc.RpcError:
                pass
            finally:
                stream.inbox.put(_CLOSE)

        threading.Thread(target=read, name="mcp-reader", daemon=True).start()
        try:
            while True:
                item = stream.inbox.get()
                if item is _CLOSE:
                    return
                if isinstance(item, discovery_pb2.DiscoveryRequest):
                    if stream.snapshot is None:
                        stream.waiting[item.type_url] = item  # answered when the first snapshot comes
                        continue
                    response = self._answer(stream, item)
                    if response is not None:
                        yield response
                elif isinstance(item, Snapshot):
                    yield from self._take(stream, item)
        finally:
            with self._lock:
                self._streams.discard(stream)
            log.info("mcp stream closed", extra={"peer": stream.peer})

    def _take(self, stream: _Stream, snapshot: Snapshot) -> Iterator[bytes]:
        """A new snapshot: the steps to send (_steps: a removal's steps, each sent whole in
        kinds.REMOVAL_ORDER, and the newest snapshot queued after them folded into the last), then answer
        the requests held for the first one and push each subscribed type that moved, step by step, each
        response saying how many more of this batch follow: a removal's steps are one batch, so istiod
        takes them in one push."""
        steps = self._steps(stream, snapshot)
        if stream.snapshot is not None:
            steps = [step for step in steps if step.serial > stream.snapshot.serial]
        if not steps:
            return
        waiting, stream.waiting = stream.waiting, {}
        # Decided before the first is sent, so that every count is exact: a response announced and never
        # sent would hold istiod's next full push until its debounce maximum.
        stream.snapshot = steps[0]
        versions = dict(stream.sent_version)
        batch: list[tuple[Snapshot, str]] = []
        for step in steps:
            for type_url in push_order(set(waiting) | set(versions)):
                if type_url in waiting:
                    answered = self._answers(stream, waiting.pop(type_url))
                else:
                    answered = step.version(type_url) != versions[type_url]
                if answered:
                    batch.append((step, type_url))
                    versions[type_url] = step.version(type_url)
        for position, (step, type_url) in enumerate(batch):
            stream.snapshot = step
            yield self._response(stream, type_url) + following(len(batch) - 1 - position)
        stream.snapshot = steps[-1]

    def _steps(self, stream: _Stream, snapshot: Snapshot) -> list[Snapshot]:
        """The snapshots one batch sends, in order. Snapshots queued after a non-barrier one are folded into
        it (bursts coalesce by themselves, with no fixed delay); a barrier (a removal step, kinds.REMOVAL_ORDER)
        is sent whole, and the store hands over the next step of its apply right after it, so that one is
        waited for (at most STEP_WAIT) and joins the batch. At most MAX_STEPS steps; requests met on the way
        are put back."""
        steps, put_back = [snapshot], []
        try:
            while len(steps) < MAX_STEPS:
                last = steps[-1]
                try:
                    queued = stream.inbox.get(timeout=STEP_WAIT) if last.barrier else stream.inbox.get_nowait()
                except queue.Empty:
                    break
                if queued is _CLOSE:
                    put_back.append(queued)
                    break
                if not isinstance(queued, Snapshot):
                    put_back.append(queued)
                elif queued.serial > last.serial:
                    if last.barrier:
                        steps.append(queued)
                    else:
                        steps[-1] = queued
        finally:
            for item in put_back:
                stream.inbox.put(item)
        return steps

    def _answer(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> bytes | None:
        return self._response(stream, request.type_url) if self._answers(stream, request) else None

    def _answers(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> bool:
        """Whether a request gets a response: not a NACK (logged and reported here, once per rejected
        response), not an ACK of an older response or of the newest one."""
        type_url = request.type_url
        if request.HasField("error_detail"):
            # Not answered: istiod keeps what it had, and the next change is pushed. Resending the same
            # state would be rejected again.
            if stream.nacked_nonce.get(type_url) != request.response_nonce:
                stream.nacked_nonce[type_url] = request.response_nonce
                if self._on_nack is not None:
                    self._on_nack(type_url)
                log.error(
                    "istiod rejected config",
                    extra={
                        "peer": stream.peer,
                        "type_url": type_url,
                        "nonce": request.response_nonce,
                        "rejected_version": stream.sent_version.get(type_url, "")
                        if request.response_nonce == stream.sent_nonce.get(type_url)
                        else "",
                        "kept_version": request.version_info,
                        "error": request.error_detail.message,
                    },
                )
            return False
        latest = stream.sent_nonce.get(type_url)
        if latest is not None and request.response_nonce:
            if request.response_nonce != latest:
                return False  # an ACK of an older response; a newer one is on its way
            if stream.snapshot is not None and stream.snapshot.version(type_url) == stream.sent_version[type_url]:
                return False  # an ACK of what we sent, and nothing newer
        return True

    def _response(self, stream: _Stream, type_url: str) -> bytes:
        assert stream.snapshot is not None  # requests wait in stream.waiting until there is one
        resources = stream.snapshot.resources(type_url)
        nonce = str(next(stream.nonces))
        stream.sent_version[type_url] = resources.version
        stream.sent_nonce[type_url] = nonce
        if self._on_push is not None:
            since = time.monotonic() - resources.changed_at if resources.changed_at else 0.0
            self._on_push(type_url, resources.count, since)
        return encode_response(resources, type_url, nonce)
