"""An in-memory Diego BBS that speaks the real BBS wire protocol, for tests and demos.

Transport is HTTPS with mutual TLS: the server requires a client certificate signed by the given
CA, TLS 1.2 or newer (TLS 1.2 restricted to ECDHE-RSA-AES-GCM, as BBS does). Every call is a POST
with a protobuf body; answers are HTTP 200 with a protobuf response whose `error` field carries
failures, and 404 for unknown paths.

The event stream `/v1/events/lrp_instances.r1` is written the way BBS writes it after hijacking
the connection: the response declares `Transfer-Encoding: chunked` and the server frames every
chunk itself as `"%x;\\r\\n"` (hex size, `;`, an empty chunk extension), the payload, `"\\r\\n"`;
each chunk carries one server-sent event `id: <n>\\nevent: <type>\\ndata: <base64>\\n\\n` with ids
counting from 0 per stream; closing writes `0\\r\\n\\r\\n`. There are no heartbeats and no initial
snapshot; a subscriber that closed its connection is dropped. A non-empty `cell_id` filters the
actual-LRP events to that cell (desired-LRP events always pass), as BBS does.

State changes are made through `BBSDouble` methods that mirror what Diego cells and the Cloud
Controller bridge do (desire an LRP, start / crash / evacuate / suspect / retire / remove an
instance); each emits the event sequence a real BBS emits (as observed on bbs@8a3588f):

- start: actual_lrp_instance_created (UNCLAIMED, routable false), changed to CLAIMED, changed to
  RUNNING with `routable` set explicitly (optionally false then at once true: a readiness check);
- crash with a quick restart: actual_lrp_crashed, actual_lrp_instance_created of the new UNCLAIMED
  instance (a new guid), actual_lrp_instance_removed of the crashed one (later crashes: CRASHED);
- evacuation: created (the EVACUATING copy), created (the UNCLAIMED replacement), later removed
  (the evacuating copy);
- a vanished cell: its instances change to SUSPECT, an UNCLAIMED replacement is created, and the
  SUSPECT copy is removed once the replacement runs;
- RetireActualLRP: actual_lrp_instance_removed twice.

Faults, for tests of what a client does when its BBS misbehaves (also on the admin API,
bbs_double.admin):

- `fail_requests()` makes the next N requests of an endpoint fail: with any `Error.Type` in the
  response's `error` field (any number, including ones no client knows), or with a bare HTTP status
  such as the 503 a BBS answers until its migrations finish;
- `hang()` until `resume()`: connections are still accepted (TCP and the TLS handshake) but no request
  is answered and open event streams send nothing, as a BBS stuck on its database or stopped
  (SIGSTOP) behaves; what was held is answered and sent on `resume()`;
- `restart(keep_state=...)`: the process restarts on the same port (every event stream ends, every
  connection is cut); with `keep_state=False` it comes back empty, as a BBS whose database was lost or
  replaced, and, as such a BBS, sends no event about what it lost;
- `close_event_streams()` ends the open streams cleanly.

`requests_received(path)` counts the requests each endpoint received, so a test can wait for a
client's next request instead of sleeping. Modification tags carry a per-record epoch and an index
bumped on every change; `since` is unix nanoseconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import select
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message

from copilot.protos import bbs_pb2 as bbs

__all__ = ["BBSDouble", "EVENTS_PATH"]

log = logging.getLogger(__name__)

EVENTS_PATH = "/v1/events/lrp_instances.r1"
_PROTOBUF = "application/x-protobuf"
_TLS12_CIPHERS = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
_HANDSHAKE_TIMEOUT = 5.0
_STREAM_DRAIN_TIMEOUT = 2.0
_SUBSCRIBER_CHECK_INTERVAL = 0.2  # how often an idle event stream checks that its client is still there

ORDINARY = bbs.ActualLRP.ORDINARY
EVACUATING = bbs.ActualLRP.EVACUATING
SUSPECT = bbs.ActualLRP.SUSPECT
UNCLAIMED, CLAIMED, RUNNING, CRASHED = "UNCLAIMED", "CLAIMED", "RUNNING", "CRASHED"
IMMEDIATE_RESTARTS = 3  # Diego's default restart policy: the first three crashes restart at once

_ActualKey = tuple[str, int, int]  # (process_guid, index, presence)

# What each endpoint answers; an injected failure goes in its `error` field (PingResponse has none).
_RESPONSE_TYPES: dict[str, type[Message]] = {
    "/v1/ping": bbs.PingResponse,
    "/v1/actual_lrps/list": bbs.ActualLRPsResponse,
    "/v1/actual_lrps/list_by_process_guids": bbs.ActualLRPsResponse,
    "/v1/desired_lrp_routing_infos/list": bbs.DesiredLRPsResponse,
    "/v1/desired_lrps/list.r3": bbs.DesiredLRPsResponse,
}


@dataclass
class _Failure:
    """Requests of one endpoint still to fail, and how."""

    remaining: int
    error_type: int
    message: str
    http_status: int | None


@dataclass
class _Event:
    """One event for the stream; `cell_id` None means it is not filtered by cell."""

    event_type: str
    data: bytes
    cell_id: str | None = None


@dataclass
class _Subscriber:
    """One open event stream: its cell filter and the queue its handler thread drains."""

    cell_id: str
    events: queue.SimpleQueue[_Event | None] = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)

    def wants(self, event: _Event) -> bool:
        return not self.cell_id or event.cell_id is None or event.cell_id == self.cell_id


def _parse(message: Message, body: bytes) -> str | None:
    """Parse `body` into `message`; return an error description, or None on success."""
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError) as err:  # ValueError: e.g. invalid UTF-8 in a string field
        return f"failed to parse {type(message).__name__}: {err}"
    return None


def _invalid_protobuf(detail: str) -> bbs.Error:
    return bbs.Error(type=bbs.Error.InvalidProtobufMessage, message=detail)


def _copy(message: Any) -> Any:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def _info(lrp: bbs.ActualLRP) -> bbs.ActualLRPInfo:
    """The ActualLRPInfo half of an ActualLRP, as carried by changed events."""
    info = bbs.ActualLRPInfo(
        crash_count=lrp.crash_count,
        crash_reason=lrp.crash_reason,
        state=lrp.state,
        placement_error=lrp.placement_error,
        since=lrp.since,
        presence=lrp.presence,
        availability_zone=lrp.availability_zone,
    )
    info.actual_lrp_net_info.CopyFrom(lrp.actual_lrp_net_info)
    info.modification_tag.CopyFrom(lrp.modification_tag)
    if lrp.HasField("routable"):
        info.Routable = lrp.routable
    return info


class _Handler(BaseHTTPRequestHandler):
    """Dispatches one connection's requests to the owning BBSDouble."""

    protocol_version = "HTTP/1.1"
    server_version = "bbs-double"
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base-class signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        double = self.server.double
        double._count_request(path)
        if not double._wait_while_hung():  # stopping while hung: the connection is cut unanswered
            self.close_connection = True
            return
        route = double._routes().get(path)
        if route is None and path != EVENTS_PATH:
            self._not_found()
            return
        failure = double._take_failure(path)
        if failure is not None:
            self._fail(path, failure)
            return
        if path == EVENTS_PATH:
            self._stream_events(body)
            return
        assert route is not None
        try:
            response = route(body)
        except Exception as err:  # a bug in the double: answer like BBS would, and keep serving
            log.exception("handler for %s failed", path)
            response = bbs.Error(type=bbs.Error.UnknownError, message=str(err))
            self._send(500, response)
            return
        self._send(200, response)

    def _fail(self, path: str, failure: _Failure) -> None:
        """Answer an injected failure: a bare HTTP status, or an Error as BBS sends it."""
        if failure.http_status is not None:
            payload = f"{failure.message}\n".encode()
            self.send_response(failure.http_status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        error = bbs.Error(type=failure.error_type, message=failure.message)
        response_type = _RESPONSE_TYPES.get(path)
        if response_type is None:  # the event stream: BBS answers a failed subscription with 500
            self.close_connection = True
            self._send(500, error)
        elif response_type is bbs.PingResponse:
            self._send(200, bbs.PingResponse(available=False))
        else:
            self._send(200, response_type(error=error))

    def do_GET(self) -> None:
        self._not_found()

    def do_PUT(self) -> None:
        self._not_found()

    def do_DELETE(self) -> None:
        self._not_found()

    def _not_found(self) -> None:
        self._discard_body()
        if not self.server.double._wait_while_hung():
            self.close_connection = True
            return
        payload = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _discard_body(self) -> None:
        if self.command not in ("POST", "PUT"):
            return
        if self.headers.get("Content-Length") or "chunked" in self.headers.get("Transfer-Encoding", ""):
            self._read_body()

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering a malformed one."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""
        except ValueError:
            self.close_connection = True
            self.send_error(400, "malformed request body framing")
            return None

    def _send(self, status: int, message: Message) -> None:
        payload = message.SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", _PROTOBUF)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream_events(self, body: bytes) -> None:
        request = bbs.EventsByCellId()
        problem = _parse(request, body)
        if problem is not None:
            self.close_connection = True
            self._send(500, _invalid_protobuf(problem))
            return
        # Subscribe before the headers go out: anything emitted after a client has seen the
        # response headers is guaranteed to reach it.
        subscriber = self.server.double._subscribe(request.cell_id)
        self.close_connection = True
        if subscriber is None:  # the double is stopping
            self.send_error(503, "shutting down")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
            self.send_header("Connection", "keep-alive")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            event_id = 0
            double = self.server.double
            while True:
                try:
                    event = subscriber.events.get(timeout=_SUBSCRIBER_CHECK_INTERVAL)
                except queue.Empty:
                    if self._client_gone():
                        return
                    continue
                while not double._answering.wait(_SUBSCRIBER_CHECK_INTERVAL):  # hung: hold it until resumed
                    if self._client_gone():
                        return
                if event is None:
                    self.wfile.write(b"0\r\n\r\n")
                    return
                payload = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    event_id,
                    event.event_type.encode(),
                    base64.standard_b64encode(event.data),
                )
                self.wfile.write(b"%x;\r\n%s\r\n" % (len(payload), payload))
                event_id += 1
        except OSError as err:
            log.debug("event stream to %s ended: %s", self.address_string(), err)
        finally:
            self.server.double._unsubscribe(subscriber)
            subscriber.done.set()


    def _client_gone(self) -> bool:
        """True once the subscriber closed its connection (it sends nothing after its request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            self.connection.settimeout(0.05)
            try:
                return self.connection.recv(1) == b""
            finally:
                self.connection.settimeout(None)
        except TimeoutError:
            return False
        except (OSError, ValueError):
            return True


class _TLSServer(ThreadingHTTPServer):
    """A threading HTTP server that does the TLS handshake in each connection's own thread and
    keeps track of live connections so that stopping can cut idle keep-alive ones."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], double: BBSDouble, context: ssl.SSLContext) -> None:
        self.double = double
        self.context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN of the address, which can stall on a box
        # without working reverse DNS; the name is unused here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(_HANDSHAKE_TIMEOUT)
            conn = self.context.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (OSError, ssl.SSLError) as err:
            log.debug("TLS handshake with %s failed: %s", client_address, err)
            return
        with self._connections_lock:
            self._connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        except OSError as err:
            log.debug("connection from %s failed: %s", client_address, err)
        finally:
            with self._connections_lock:
                self._connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address, exc_info=True)

    def cut_connections(self) -> None:
        """Shut down every live connection; their handler threads then see EOF and end."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class BBSDouble:
    """An in-memory Diego BBS served over mutual-TLS HTTPS; all methods are thread-safe.

    Desired LRPs are keyed by process guid, actual LRPs by (process guid, index, presence).
    Methods that change state emit the event sequences a real BBS emits on the lrp_instances stream
    (module docstring); those that name a record which does not exist raise KeyError, and those
    asking for a transition a real BBS refuses (crashing an UNCLAIMED instance, evacuating twice)
    raise ValueError.
    """

    def __init__(
        self,
        *,
        ca_cert: Path,
        server_cert: Path,
        server_key: Path,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._ca_cert = Path(ca_cert)
        self._server_cert = Path(server_cert)
        self._server_key = Path(server_key)
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._desired: dict[str, bbs.DesiredLRP] = {}
        self._actual: dict[_ActualKey, bbs.ActualLRP] = {}
        self._subscribers: list[_Subscriber] = []
        self._failures: dict[str, _Failure] = {}  # path ("*": any endpoint) -> requests still to fail
        self._requests: dict[str, int] = {}  # path -> requests received
        self._answering = threading.Event()  # cleared while hung
        self._answering.set()
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(_TLS12_CIPHERS)  # TLS 1.3 suites are unaffected
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self._ca_cert))
        context.load_cert_chain(certfile=str(self._server_cert), keyfile=str(self._server_key))
        return context

    def start(self) -> None:
        """Bind and serve in a background thread. After a stop(), binds the same port again."""
        if self._server is not None:
            raise RuntimeError("BBSDouble is already running")
        server = _TLSServer((self._host, self._port), self, self._ssl_context())
        self._port = server.server_port
        with self._lock:
            self._stopping = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"bbs-double:{self._port}",
            daemon=True,
        )
        self._thread.start()
        log.info("BBS double listening on %s", self.url)

    def stop(self) -> None:
        """End every event stream with `0\\r\\n\\r\\n`, cut other connections and stop listening.

        State (desired and actual LRPs) is kept, so start() serves it again."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._lock:
            self._stopping = True
            subscribers = list(self._subscribers)
        self._answering.set()  # held requests end unanswered, held streams get their end
        self.close_event_streams()
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + _STREAM_DRAIN_TIMEOUT
        for subscriber in subscribers:
            subscriber.done.wait(max(0.0, deadline - time.monotonic()))
        server.cut_connections()
        if thread is not None:
            thread.join(timeout=_STREAM_DRAIN_TIMEOUT)
        self._server = None
        self._thread = None

    def restart(self, *, keep_state: bool = True) -> None:
        """Restart on the same port, as the BBS process would: stop() (every event stream ends with
        `0\\r\\n\\r\\n`, every other connection is cut), then start(). With `keep_state=False` the
        desired and actual LRPs are gone, as with a BBS whose database was lost or replaced, and no event
        tells subscribers so (a real BBS has nothing to send about records it does not have). Injected
        failures are kept (they stand for what the restarted BBS answers, e.g. 503 until its migrations
        finish); a hang ends."""
        self.stop()
        if not keep_state:
            with self._lock:
                self._desired.clear()
                self._actual.clear()
        self.start()

    def __enter__(self) -> BBSDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (the requested port before that)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    # ------------------------------------------------------------------ events plumbing

    def _subscribe(self, cell_id: str) -> _Subscriber | None:
        with self._lock:
            if self._stopping:
                return None
            subscriber = _Subscriber(cell_id=cell_id)
            self._subscribers.append(subscriber)
            return subscriber

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def _emit(self, event_type: str, message: Message, cell_id: str | None = None) -> None:
        """Queue an event to every matching subscriber; call with the lock held."""
        event = _Event(event_type, message.SerializeToString(), cell_id)
        for subscriber in self._subscribers:
            if subscriber.wants(event):
                subscriber.events.put(event)

    def inject_raw_event(self, event_type: str, data: bytes) -> None:
        """Send every subscriber an event whose data is base64(`data`), unparsed and unfiltered."""
        with self._lock:
            event = _Event(event_type, bytes(data))
            for subscriber in self._subscribers:
                subscriber.events.put(event)

    def close_event_streams(self) -> None:
        """End the current subscribers' streams cleanly (`0\\r\\n\\r\\n`); clients may reconnect."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber.events.put(None)

    def subscriber_count(self) -> int:
        """How many event streams are open."""
        with self._lock:
            return len(self._subscribers)

    # ------------------------------------------------------------------ injected failures

    def hang(self) -> None:
        """Stop answering until resume(): connections are accepted and TLS handshakes complete, but
        requests get no answer and open event streams send nothing (events are kept for them)."""
        self._answering.clear()

    def resume(self) -> None:
        """End a hang: held requests are answered, held events sent."""
        self._answering.set()

    @property
    def hung(self) -> bool:
        return not self._answering.is_set()

    def _wait_while_hung(self) -> bool:
        """Blocks a request while hung; False if the double is stopping (the request goes unanswered)."""
        self._answering.wait()
        with self._lock:
            return not self._stopping

    def _count_request(self, path: str) -> None:
        with self._lock:
            self._requests[path] = self._requests.get(path, 0) + 1

    def requests_received(self, path: str = "*") -> int:
        """How many requests `path` ("*": any path) received since the double was created, answered
        or not (a hung or failed request counts)."""
        with self._lock:
            return sum(self._requests.values()) if path == "*" else self._requests.get(path, 0)

    def fail_requests(
        self,
        path: str = "*",
        error_type: int = bbs.Error.UnknownError,
        *,
        count: int = 1,
        message: str = "",
        http_status: int | None = None,
    ) -> None:
        """Make the next `count` requests of endpoint `path` ("*": any endpoint) fail.

        By default the answer is HTTP 200 with `error` {type: `error_type`, message} in the
        endpoint's response, as BBS reports failures; `error_type` may be any number, including
        retired or unknown ones (e.g. 29 before a client knew Unrecoverable, or 77). Ping answers
        available=false instead (its response has no error field); the event stream answers HTTP 500
        with the Error. With `http_status` the answer is that status with a plain-text body instead
        (e.g. 503, what BBS answers until its migrations finish). A later call for the same path
        replaces the earlier one; count 0 cancels it."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if path != "*" and path not in _RESPONSE_TYPES and path != EVENTS_PATH:
            raise ValueError(f"no such BBS endpoint: {path!r}")
        if not message:
            try:
                name = bbs.Error.Type.Name(error_type)
            except ValueError:
                name = f"Error.Type({error_type})"
            message = f"bbs-double injected failure ({name if http_status is None else http_status})"
        with self._lock:
            if count == 0:
                self._failures.pop(path, None)
            else:
                self._failures[path] = _Failure(count, int(error_type), message, http_status)

    def pending_failures(self, path: str = "*") -> int:
        """How many requests of `path` are still to fail."""
        with self._lock:
            failure = self._failures.get(path)
            return failure.remaining if failure is not None else 0

    def clear_failures(self) -> None:
        """Cancel every injected failure."""
        with self._lock:
            self._failures.clear()

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for key in (path, "*"):
                failure = self._failures.get(key)
                if failure is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        del self._failures[key]
                    return failure
            return None

    # ------------------------------------------------------------------ HTTP endpoints

    def _routes(self) -> dict[str, Callable[[bytes], Message]]:
        return {
            "/v1/ping": self._ping,
            "/v1/actual_lrps/list": self._list_actual_lrps,
            "/v1/actual_lrps/list_by_process_guids": self._list_actual_lrps_by_process_guids,
            "/v1/desired_lrp_routing_infos/list": self._list_desired_lrp_routing_infos,
            "/v1/desired_lrps/list.r3": self._list_desired_lrps,
        }

    def _ping(self, body: bytes) -> Message:
        return bbs.PingResponse(available=True)

    def _list_actual_lrps(self, body: bytes) -> Message:
        request = bbs.ActualLRPsRequest()
        problem = _parse(request, body)
        if problem is not None:
            return bbs.ActualLRPsResponse(error=_invalid_protobuf(problem))
        index = request.index if request.HasField("index") else None

        def matches(lrp: bbs.ActualLRP) -> bool:
            key = lrp.actual_lrp_key
            return (
                (not request.domain or key.domain == request.domain)
                and (not request.cell_id or lrp.actual_lrp_instance_key.cell_id == request.cell_id)
                and (not request.process_guid or key.process_guid == request.process_guid)
                and (index is None or key.index == index)
            )

        return bbs.ActualLRPsResponse(actual_lrps=[lrp for lrp in self.actual_lrps() if matches(lrp)])

    def _list_actual_lrps_by_process_guids(self, body: bytes) -> Message:
        request = bbs.ActualLRPsByProcessGuidsRequest()
        problem = _parse(request, body)
        if problem is not None:
            return bbs.ActualLRPsResponse(error=_invalid_protobuf(problem))
        wanted = set(request.process_guids)
        return bbs.ActualLRPsResponse(
            actual_lrps=[lrp for lrp in self.actual_lrps() if not wanted or lrp.actual_lrp_key.process_guid in wanted]
        )

    def _filtered_desired(self, body: bytes) -> tuple[list[bbs.DesiredLRP], bbs.Error | None]:
        request = bbs.DesiredLRPsRequest()
        problem = _parse(request, body)
        if problem is not None:
            return [], _invalid_protobuf(problem)
        wanted = set(request.process_guids)
        return [
            lrp
            for lrp in self.desired_lrps()
            if (not wanted or lrp.process_guid in wanted) and (not request.domain or lrp.domain == request.domain)
        ], None

    def _list_desired_lrps(self, body: bytes) -> Message:
        lrps, error = self._filtered_desired(body)
        if error is not None:
            return bbs.DesiredLRPsResponse(error=error)
        return bbs.DesiredLRPsResponse(desired_lrps=lrps)

    def _list_desired_lrp_routing_infos(self, body: bytes) -> Message:
        lrps, error = self._filtered_desired(body)
        if error is not None:
            return bbs.DesiredLRPsResponse(error=error)
        # Routing info is the key (process guid, domain, log guid), instances, routes and tag.
        infos = []
        for lrp in lrps:
            info = bbs.DesiredLRP(
                process_guid=lrp.process_guid, domain=lrp.domain, log_guid=lrp.log_guid, instances=lrp.instances
            )
            info.routes.CopyFrom(lrp.routes)
            info.modification_tag.CopyFrom(lrp.modification_tag)
            infos.append(info)
        return bbs.DesiredLRPsResponse(desired_lrps=infos)

    # ------------------------------------------------------------------ snapshots

    def desired_lrps(self) -> list[bbs.DesiredLRP]:
        """Copies of the desired LRPs, ordered by process guid."""
        with self._lock:
            return [_copy(self._desired[guid]) for guid in sorted(self._desired)]

    def actual_lrps(self) -> list[bbs.ActualLRP]:
        """Copies of the actual LRPs, ordered by (process guid, index, presence)."""
        with self._lock:
            return [_copy(self._actual[key]) for key in sorted(self._actual)]

    # ------------------------------------------------------------------ desired LRPs

    def desire_lrp(
        self,
        process_guid: str,
        *,
        http_routes: list[dict[str, Any]] | None = None,
        tcp_routes: list[dict[str, Any]] | None = None,
        internal_routes: list[dict[str, Any]] | None = None,
        instances: int = 1,
        domain: str = "cf-apps",
        ports: list[int] | None = None,
        raw_routes: dict[str, bytes] | None = None,
        log_guid: str | None = None,
    ) -> None:
        """Create or replace a desired LRP (desired_lrp_created, or desired_lrp_changed).

        Routes are stored as BBS stores them: JSON under "cf-router", "tcp-router" and
        "internal-router" (a key is absent when its argument is None); `raw_routes` adds or
        overrides entries with raw bytes. `ports` defaults to [8080]; `log_guid` (the app guid) to the
        process guid."""
        routes = bbs.ProtoRoutes()
        for router, value in (
            ("cf-router", http_routes),
            ("tcp-router", tcp_routes),
            ("internal-router", internal_routes),
        ):
            if value is not None:
                routes.routes[router] = json.dumps(value).encode()
        for router, raw in (raw_routes or {}).items():
            routes.routes[router] = bytes(raw)
        lrp = bbs.DesiredLRP(
            process_guid=process_guid,
            domain=domain,
            instances=instances,
            ports=[8080] if ports is None else ports,
            log_guid=log_guid or process_guid,
        )
        lrp.routes.CopyFrom(routes)
        with self._lock:
            before = self._desired.get(process_guid)
            if before is None:
                lrp.modification_tag.CopyFrom(bbs.ModificationTag(epoch=uuid.uuid4().hex, index=0))
                self._desired[process_guid] = lrp
                self._emit("desired_lrp_created", bbs.DesiredLRPCreatedEvent(desired_lrp=lrp))
            else:
                lrp.modification_tag.CopyFrom(
                    bbs.ModificationTag(epoch=before.modification_tag.epoch, index=before.modification_tag.index + 1)
                )
                self._desired[process_guid] = lrp
                self._emit("desired_lrp_changed", bbs.DesiredLRPChangedEvent(before=before, after=lrp))

    def remove_desired_lrp(self, process_guid: str) -> None:
        """Delete a desired LRP (desired_lrp_removed); its actual LRPs are left to the caller."""
        with self._lock:
            lrp = self._desired.pop(process_guid)
            self._emit("desired_lrp_removed", bbs.DesiredLRPRemovedEvent(desired_lrp=lrp))

    # ------------------------------------------------------------------ actual LRPs
    #
    # Every change follows the sequences a real BBS emits when Cloud Controller and cells drive it
    # (see the class docstring). Instance identity is (instance guid): a changed event never changes
    # it; a different instance at an index is a created event (and a removed one for the old).

    def _get_actual(self, process_guid: str, index: int, presence: int = ORDINARY) -> bbs.ActualLRP:
        try:
            return self._actual[(process_guid, index, presence)]
        except KeyError:
            name = bbs.ActualLRP.Presence.Name(presence)
            raise KeyError(f"no {name} actual LRP {process_guid!r} index {index}") from None

    def _emit_changed(self, before: bbs.ActualLRP, after: bbs.ActualLRP) -> None:
        """actual_lrp_instance_changed: the instance key is after's, or before's if after has none."""
        instance_key = after.actual_lrp_instance_key
        if not instance_key.instance_guid and not instance_key.cell_id:
            instance_key = before.actual_lrp_instance_key
        event = bbs.ActualLRPInstanceChangedEvent(
            actual_lrp_key=after.actual_lrp_key,
            actual_lrp_instance_key=instance_key,
            before=_info(before),
            after=_info(after),
        )
        self._emit("actual_lrp_instance_changed", event, instance_key.cell_id)

    def _emit_created(self, lrp: bbs.ActualLRP) -> None:
        event = bbs.ActualLRPInstanceCreatedEvent(actual_lrp=lrp)
        self._emit("actual_lrp_instance_created", event, lrp.actual_lrp_instance_key.cell_id)

    def _emit_removed(self, lrp: bbs.ActualLRP) -> None:
        event = bbs.ActualLRPInstanceRemovedEvent(actual_lrp=lrp)
        self._emit("actual_lrp_instance_removed", event, lrp.actual_lrp_instance_key.cell_id)

    @staticmethod
    def _bump(lrp: bbs.ActualLRP) -> None:
        lrp.modification_tag.index += 1
        lrp.since = time.time_ns()

    def _change(self, key: _ActualKey, after: bbs.ActualLRP) -> bool:
        """Store `after` at `key` and emit a changed event, if it differs from what is there."""
        before = self._actual[key]
        if after == before:
            return False
        self._bump(after)
        self._actual[key] = after
        self._emit_changed(before, after)
        return True

    def _unclaimed(
        self,
        process_guid: str,
        index: int,
        *,
        instance_guid: str | None = None,
        replacing: bbs.ActualLRP | None = None,
    ) -> bbs.ActualLRP:
        """A new UNCLAIMED ORDINARY instance: an instance guid but no cell, no net info, routable false.

        One `replacing` an instance at the same index (the same BBS row) keeps its crash count and
        modification epoch."""
        desired = self._desired.get(process_guid)
        domain = desired.domain if desired is not None else "cf-apps"
        lrp = bbs.ActualLRP(state=UNCLAIMED, presence=ORDINARY, since=time.time_ns(), routable=False)
        lrp.actual_lrp_key.CopyFrom(bbs.ActualLRPKey(process_guid=process_guid, index=index, domain=domain))
        lrp.actual_lrp_instance_key.CopyFrom(bbs.ActualLRPInstanceKey(instance_guid=instance_guid or str(uuid.uuid4())))
        if replacing is not None:
            lrp.crash_count = replacing.crash_count
            lrp.crash_reason = replacing.crash_reason
            lrp.modification_tag.CopyFrom(
                bbs.ModificationTag(epoch=replacing.modification_tag.epoch, index=replacing.modification_tag.index + 1)
            )
        else:
            lrp.modification_tag.CopyFrom(bbs.ModificationTag(epoch=uuid.uuid4().hex, index=0))
        return lrp

    def start_instance(
        self,
        process_guid: str,
        index: int,
        *,
        address: str = "127.0.0.1",
        host_port: int,
        container_port: int = 8080,
        instance_guid: str | None = None,
        instance_address: str = "",
        preferred_address: str = "HOST",
        host_tls_proxy_port: int = 0,
        container_tls_proxy_port: int = 0,
        extra_ports: list[tuple[int, int]] | None = None,
        availability_zone: str = "z1",
        routable: bool | None = None,
        cell_id: str = "cell-1",
        readiness_check: bool = False,
    ) -> str:
        """Make the ORDINARY instance at `index` RUNNING on `cell_id`; return its instance guid.

        As a real BBS does it: a new instance is created UNCLAIMED (routable false), changed to
        CLAIMED, then to RUNNING with its net info and `routable` set explicitly: `routable` None or
        True gives true, False gives false. With `readiness_check` the cell starts it routable=false
        and at once sets routable=true, as a rep with a readiness check does. An UNCLAIMED instance
        already at the index (a crash's restart, an evacuation's or a vanished cell's replacement) is
        claimed and started, keeping its guid; a RUNNING one with the same guid only has its net info
        updated (a changed event if anything differs). When `instance_guid` names another instance
        than the one at the index (or that one is CRASHED), the new one is created UNCLAIMED and the
        old one removed. A SUSPECT copy at the index is removed once its replacement runs.
        `extra_ports` are (container, host) pairs, e.g. (2222, 61002) for SSH."""
        net_info = bbs.ActualLRPNetInfo(
            address=address,
            instance_address=instance_address,
            preferred_address=bbs.ActualLRPNetInfo.PreferredAddress.Value(preferred_address),
            ports=[
                bbs.PortMapping(
                    container_port=container_port,
                    host_port=host_port,
                    container_tls_proxy_port=container_tls_proxy_port,
                    host_tls_proxy_port=host_tls_proxy_port,
                )
            ]
            + [bbs.PortMapping(container_port=c, host_port=h) for c, h in extra_ports or []],
        )
        final_routable = routable is not False
        with self._lock:
            key = (process_guid, index, ORDINARY)
            current = self._actual.get(key)
            current_guid = current.actual_lrp_instance_key.instance_guid if current is not None else ""
            reusable = current is not None and current.state != CRASHED and bool(current_guid)
            if current is None or not reusable or (instance_guid is not None and instance_guid != current_guid):
                fresh = self._unclaimed(process_guid, index, instance_guid=instance_guid, replacing=current)
                self._actual[key] = fresh
                self._emit_created(fresh)
                if current is not None:
                    self._emit_removed(current)
                current = fresh
            guid = current.actual_lrp_instance_key.instance_guid
            if current.state == UNCLAIMED or (current.state == CLAIMED and current.actual_lrp_instance_key.cell_id != cell_id):
                claimed = _copy(current)
                claimed.state = CLAIMED
                claimed.actual_lrp_instance_key.cell_id = cell_id
                claimed.ClearField("actual_lrp_net_info")
                claimed.routable = False
                self._change(key, claimed)
            running = _copy(self._actual[key])
            running.state = RUNNING
            running.actual_lrp_instance_key.cell_id = cell_id
            running.actual_lrp_net_info.CopyFrom(net_info)
            running.availability_zone = availability_zone
            running.routable = final_routable and not readiness_check
            self._change(key, running)
            if running.routable != final_routable:
                ready = _copy(running)
                ready.routable = final_routable
                self._change(key, ready)
            suspect = self._actual.pop((process_guid, index, SUSPECT), None)
            if suspect is not None:
                self._emit_removed(suspect)
            return guid

    def set_routable(self, process_guid: str, index: int, routable: bool | None) -> None:
        """Set the ORDINARY instance's `routable` (a changed event), as a cell's repeated start does.

        None clears the field, as a BBS older than the field sends it (unset means routable)."""
        with self._lock:
            key = (process_guid, index, ORDINARY)
            after = _copy(self._get_actual(process_guid, index))
            if routable is None:
                after.ClearField("routable")
            else:
                after.routable = routable
            self._change(key, after)

    def crash_instance(self, process_guid: str, index: int, *, restart: bool | None = None) -> None:
        """Crash the ORDINARY (CLAIMED or RUNNING) instance; crash_count + 1.

        Emits actual_lrp_crashed first. A crash that restarts at once (`restart` None: the first
        three crashes, Diego's default policy) then emits actual_lrp_instance_created of a new
        UNCLAIMED instance (a new guid) and actual_lrp_instance_removed of the crashed one, as a real
        BBS does; start_instance() then claims and starts the new one. Otherwise the instance is
        changed to CRASHED (no net info, no instance key) until start_instance() restarts it.
        Raises ValueError for an instance that cannot crash (UNCLAIMED, CRASHED)."""
        with self._lock:
            key = (process_guid, index, ORDINARY)
            current = self._get_actual(process_guid, index)
            if current.state not in (CLAIMED, RUNNING):
                raise ValueError(f"actual LRP {process_guid!r} index {index} is {current.state}; it cannot crash")
            crash_count = current.crash_count + 1
            reason = "APP/PROC/WEB: Exited with status 1 (bbs-double crash_instance)"
            if restart is None:
                restart = current.crash_count < IMMEDIATE_RESTARTS
            now = time.time_ns()
            crashed = bbs.ActualLRPCrashedEvent(
                actual_lrp_key=current.actual_lrp_key,
                actual_lrp_instance_key=current.actual_lrp_instance_key,
                crash_count=crash_count,
                crash_reason=reason,
                since=now,
            )
            self._emit("actual_lrp_crashed", crashed, current.actual_lrp_instance_key.cell_id)
            if restart:
                fresh = self._unclaimed(process_guid, index, replacing=current)
                fresh.crash_count, fresh.crash_reason = crash_count, reason
                self._actual[key] = fresh
                self._emit_created(fresh)
                self._emit_removed(current)
                return
            after = _copy(current)
            after.state = CRASHED
            after.crash_count, after.crash_reason = crash_count, reason
            after.ClearField("actual_lrp_net_info")
            after.ClearField("actual_lrp_instance_key")
            self._change(key, after)

    def evacuate_instance(self, process_guid: str, index: int) -> None:
        """Evacuate the RUNNING ORDINARY instance, as a draining cell does.

        Emits actual_lrp_instance_created of the EVACUATING copy (same guid, cell and net info),
        then actual_lrp_instance_created of the UNCLAIMED ORDINARY replacement (a new guid). The
        copy keeps serving until remove_instance(..., evacuating=True); start_instance() at the
        index claims and starts the replacement."""
        with self._lock:
            current = self._running_ordinary(process_guid, index, EVACUATING, "evacuating", "evacuates")
            evacuating = _copy(current)
            evacuating.presence = EVACUATING
            evacuating.since = time.time_ns()
            evacuating.modification_tag.CopyFrom(bbs.ModificationTag(epoch=uuid.uuid4().hex, index=0))
            self._actual[(process_guid, index, EVACUATING)] = evacuating
            self._emit_created(evacuating)
            replacement = self._unclaimed(process_guid, index, replacing=current)
            self._actual[(process_guid, index, ORDINARY)] = replacement
            self._emit_created(replacement)

    def _running_ordinary(self, process_guid: str, index: int, copy: int, copy_name: str, verb: str) -> bbs.ActualLRP:
        """The RUNNING ORDINARY instance at the index, which has no `copy` (EVACUATING or SUSPECT) yet."""
        if (process_guid, index, copy) in self._actual:
            raise ValueError(f"actual LRP {process_guid!r} index {index} is already {copy_name}")
        current = self._get_actual(process_guid, index)
        if current.state != RUNNING:
            raise ValueError(f"actual LRP {process_guid!r} index {index} is {current.state}; only a RUNNING one {verb}")
        return current

    def suspect_instance(self, process_guid: str, index: int) -> None:
        """The RUNNING ORDINARY instance's cell vanished: it becomes SUSPECT (presence 2).

        Emits actual_lrp_instance_changed (presence ORDINARY -> SUSPECT, same instance), then
        actual_lrp_instance_created of the UNCLAIMED ORDINARY replacement. The SUSPECT copy keeps
        serving; start_instance() at the index runs the replacement and then removes it."""
        with self._lock:
            current = self._running_ordinary(process_guid, index, SUSPECT, "suspect", "is suspect")
            suspect = _copy(current)
            suspect.presence = SUSPECT
            self._bump(suspect)
            del self._actual[(process_guid, index, ORDINARY)]
            self._actual[(process_guid, index, SUSPECT)] = suspect
            self._emit_changed(current, suspect)
            replacement = self._unclaimed(process_guid, index, replacing=suspect)
            self._actual[(process_guid, index, ORDINARY)] = replacement
            self._emit_created(replacement)

    def lose_cell(self, cell_id: str) -> list[tuple[str, int]]:
        """A cell's presence vanished: each RUNNING ORDINARY instance on it becomes SUSPECT
        (suspect_instance); returns their (process guid, index)."""
        with self._lock:
            lost = [
                (guid, index)
                for (guid, index, presence), lrp in sorted(self._actual.items())
                if presence == ORDINARY and lrp.state == RUNNING and lrp.actual_lrp_instance_key.cell_id == cell_id
            ]
        for guid, index in lost:
            self.suspect_instance(guid, index)
        return lost

    def remove_instance(self, process_guid: str, index: int, *, evacuating: bool = False) -> None:
        """Delete the ORDINARY (or EVACUATING) instance (actual_lrp_instance_removed), as a cell's rep
        does on scale-down or once an evacuation's replacement runs."""
        presence = EVACUATING if evacuating else ORDINARY
        with self._lock:
            lrp = self._get_actual(process_guid, index, presence)
            del self._actual[(process_guid, index, presence)]
            self._emit_removed(lrp)

    def retire_instance(self, process_guid: str, index: int) -> None:
        """RetireActualLRP on the ORDINARY instance: it is deleted and, as a real BBS does,
        actual_lrp_instance_removed is emitted twice."""
        with self._lock:
            lrp = self._get_actual(process_guid, index)
            del self._actual[(process_guid, index, ORDINARY)]
            self._emit_removed(lrp)
            self._emit_removed(lrp)
