"""The Aggregated Discovery Service (state of the world) that istiod's `xds://` config source dials.

Every type istiod asks for is answered (empty when we hold none), each response carries the full
set for its type, and a change in the snapshot is pushed to every subscribed stream at once.
Responses are assembled from pre-encoded resources (see snapshot.py). A response istiod rejects (a
NACK: a request with error_detail) is not answered; it is counted in `copilot_istiod_nacks_total`
and logged with istiod's message, once per rejected response (type and nonce) on a stream.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from copilot import metrics
from copilot.xds.snapshot import Snapshot
from copilot.xds.wire import length_delimited

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_CLOSE = object()

PushObserver = Callable[[str, int, float], None]  # (type_url, resource count, seconds since the change)


def encode_response(version: str, resources: list[bytes], type_url: str, nonce: str) -> bytes:
    """A DiscoveryResponse: version_info=1, resources=2, type_url=4, nonce=5."""
    return b"".join(
        (
            length_delimited(1, version.encode()),
            *resources,
            length_delimited(4, type_url.encode()),
            length_delimited(5, nonce.encode()),
        )
    )


class _Stream:
    """One ADS stream: what each subscribed type was last sent, and the nonce that went with it."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.sent_version: dict[str, str] = {}
        self.sent_nonce: dict[str, str] = {}
        self.nacked_nonce: dict[str, str] = {}  # the last response of each type istiod rejected
        self.nonces = itertools.count(1)
        self.inbox: queue.Queue[object] = queue.Queue()


class McpServer:
    """Serves a Snapshot over ADS. `start()` binds; `stop()` ends every stream."""

    def __init__(self, snapshot: Snapshot, on_push: PushObserver | None = None, ready: threading.Event | None = None) -> None:
        """`ready`, when given, holds every answer until it is set: a restarted Copilot must not tell istiod
        that the world is empty before its sources have been read."""
        self._snapshot = snapshot
        self._on_push = on_push
        self._ready = ready
        self._server: grpc.Server | None = None
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self.port = 0

    def start(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="mcp"),
            options=[
                ("grpc.max_send_message_length", 1 << 30),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.so_reuseport", 0),  # a second Copilot on the same port must fail, not share istiod's streams
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
        self._unsubscribe = self._snapshot.subscribe(self._on_change)
        return self.port

    def stop(self, grace: float = 0.5) -> None:
        if self._server is None:
            return
        self._unsubscribe()
        with self._lock:
            for stream in self._streams:
                stream.inbox.put(_CLOSE)
        self._server.stop(grace).wait()
        self._server = None

    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # ---- internals
    def _on_change(self, type_urls: set[str]) -> None:
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.inbox.put(type_urls)

    def _stream_aggregated_resources(self, requests: Iterator[discovery_pb2.DiscoveryRequest], context) -> Iterator[bytes]:
        stream = _Stream(context.peer())
        with self._lock:
            self._streams.add(stream)
        log.info("mcp stream opened", extra={"peer": stream.peer})

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
            if self._ready is not None and not self._ready.is_set():
                log.info("holding istiod's requests until the first sync", extra={"peer": stream.peer})
                while not self._ready.wait(1.0):
                    if not context.is_active():
                        return
            while True:
                item = stream.inbox.get()
                if item is _CLOSE:
                    return
                if isinstance(item, discovery_pb2.DiscoveryRequest):
                    response = self._answer(stream, item)
                    if response is not None:
                        yield response
                else:
                    # A change. Fold in every change already queued, then push each moved type once:
                    # bursts coalesce by themselves, with no fixed delay.
                    changed = set(item)
                    pending: list[object] = []
                    while True:
                        try:
                            queued = stream.inbox.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(queued, set):
                            changed |= queued
                        else:
                            pending.append(queued)
                    for queued in pending:
                        stream.inbox.put(queued)
                    for type_url in sorted(changed):  # push every subscribed type that moved
                        if type_url in stream.sent_version and self._snapshot.version(type_url) != stream.sent_version[type_url]:
                            yield self._response(stream, type_url)
        finally:
            with self._lock:
                self._streams.discard(stream)
            log.info("mcp stream closed", extra={"peer": stream.peer})

    def _answer(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> bytes | None:
        type_url = request.type_url
        if request.HasField("error_detail"):
            # Not answered: istiod keeps what it had, and the next change is pushed. Resending the same
            # state would be rejected again.
            if stream.nacked_nonce.get(type_url) != request.response_nonce:
                stream.nacked_nonce[type_url] = request.response_nonce
                metrics.ISTIOD_NACKS.labels(type_url).inc()
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
            return None
        latest = stream.sent_nonce.get(type_url)
        if latest is not None and request.response_nonce:
            if request.response_nonce != latest:
                return None  # an ACK of an older response; a newer one is on its way
            if self._snapshot.version(type_url) == stream.sent_version[type_url]:
                return None  # an ACK of what we sent, and nothing newer
        return self._response(stream, type_url)

    def _response(self, stream: _Stream, type_url: str) -> bytes:
        view = self._snapshot.view(type_url)
        nonce = str(next(stream.nonces))
        stream.sent_version[type_url] = view.version
        stream.sent_nonce[type_url] = nonce
        if self._on_push is not None:
            self._on_push(type_url, len(view.encoded), time.monotonic() - view.changed_at if view.changed_at else 0.0)
        return encode_response(view.version, view.encoded, type_url, nonce)
