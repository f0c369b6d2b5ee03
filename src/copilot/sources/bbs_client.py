"""A Diego BBS client over HTTPS with mutual TLS: protobuf requests and responses, and the event stream.

It owns the wire: every failure a BBS can produce (transport, HTTP status, the `error` field with
any `Error.Type`, known or not, undecodable events) becomes a BBSError or a MalformedEvent value,
never another exception. Values Copilot does not know (an error type, an event type, ...) are
reported through `report_unrecognized`: counted in `copilot_bbs_unrecognized_total{field}` and
logged once per (field, value).

Every request, and the event subscription until BBS has answered it, times out (`timeout`); the
open event stream then has no read timeout, because a real BBS sends nothing on an idle stream (no
heartbeats): a quiet foundation's healthy stream can be silent for hours. A hung BBS is detected by
the watcher's pings instead (bbs_watcher).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import requests
from google.protobuf.message import DecodeError, Message

from copilot import metrics
from copilot.protos import bbs_pb2
from copilot.sources.sse import parse_events

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, type[Message]] = {
    "desired_lrp_created": bbs_pb2.DesiredLRPCreatedEvent,
    "desired_lrp_changed": bbs_pb2.DesiredLRPChangedEvent,
    "desired_lrp_removed": bbs_pb2.DesiredLRPRemovedEvent,
    "actual_lrp_instance_created": bbs_pb2.ActualLRPInstanceCreatedEvent,
    "actual_lrp_instance_changed": bbs_pb2.ActualLRPInstanceChangedEvent,
    "actual_lrp_instance_removed": bbs_pb2.ActualLRPInstanceRemovedEvent,
    "actual_lrp_crashed": bbs_pb2.ActualLRPCrashedEvent,
}


_MAX_REMEMBERED = 1024  # distinct (field, value) pairs logged; beyond that, only counted
_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def report_unrecognized(field: str, value: object, context: str = "") -> None:
    """Counts a value of `field` that Copilot does not know; logs it the first time it is seen."""
    metrics.BBS_UNRECOGNIZED.labels(field).inc()
    key = (field, str(value))
    with _reported_lock:
        first = key not in _reported and len(_reported) < _MAX_REMEMBERED
        if first:
            _reported.add(key)
    if first:
        log.warning(
            "BBS sent a value Copilot does not know; handled as documented, reported once",
            extra={"field": field, "value": str(value), "context": context},
        )


def error_type_name(value: int) -> str:
    """The name of an `Error.Type`; a number Copilot does not know is named by its number (and reported)."""
    try:
        return bbs_pb2.Error.Type.Name(value)
    except ValueError:
        report_unrecognized("Error.type", value)
        return f"Error.Type({value})"


class BBSError(Exception):
    """BBS could not be reached, or answered with an error; `error_type` is the Error.Type it sent, if any."""

    def __init__(self, message: str, *, error_type: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


class MalformedEvent(BBSError):
    """One event on the stream could not be decoded; the stream itself is fine.

    `event_type` is the SSE event name as sent; `reason` is "unknown type" or "undecodable payload"."""

    def __init__(self, message: str, *, event_type: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.event_type = event_type
        self.reason = reason


class TLSFiles(NamedTuple):
    """BBS's mutual TLS: the CA its server certificate is signed by, and our client certificate and key."""

    ca_cert: Path
    client_cert: Path
    client_key: Path


class Event(NamedTuple):
    """One event of BBS's stream: its SSE id, its type (e.g. `actual_lrp_changed`) and its decoded payload."""

    id: str
    type: str
    message: Message


class BBSClient:
    def __init__(self, url: str, tls: TLSFiles, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()
        self._session.cert = (str(tls.client_cert), str(tls.client_key))
        self._session.verify = str(tls.ca_cert)
        self._session.trust_env = False  # REQUESTS_CA_BUNDLE and proxy variables must not override BBS mutual TLS

    def ping(self, timeout: float | None = None) -> bool:
        """BBS's answer to /v1/ping (`available`), within `timeout` (default: the client's)."""
        return bool(self._call("/v1/ping", None, bbs_pb2.PingResponse, timeout=timeout).available)

    def desired_lrp_routing_infos(self) -> list[bbs_pb2.DesiredLRP]:
        response = self._call("/v1/desired_lrp_routing_infos/list", bbs_pb2.DesiredLRPsRequest(), bbs_pb2.DesiredLRPsResponse)
        return list(response.desired_lrps)

    def actual_lrps(self) -> list[bbs_pb2.ActualLRP]:
        response = self._call("/v1/actual_lrps/list", bbs_pb2.ActualLRPsRequest(), bbs_pb2.ActualLRPsResponse)
        return list(response.actual_lrps)

    def open_events(self) -> EventStream:
        """Subscribes to /v1/events/lrp_instances.r1 for every cell; returns once the server has answered.

        BBS must answer within the timeout (a hung BBS would otherwise hold the subscriber forever);
        the open stream then blocks on reads for as long as BBS has nothing to send."""
        try:
            response = self._session.post(
                self._url + "/v1/events/lrp_instances.r1",
                data=bbs_pb2.EventsByCellId(cell_id="").SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
                stream=True,
                timeout=(self._timeout, self._timeout),
            )
        except requests.RequestException as error:
            raise BBSError(f"cannot subscribe to BBS events: {error}") from error
        if response.status_code != 200:
            try:
                raise _http_error("events subscription", response)
            finally:
                response.close()
        sock = _socket(response)
        if sock is None:
            response.close()
            raise BBSError("BBS events subscription: no connection to read the stream from")
        sock.settimeout(None)  # the headers came in time; an idle stream is not a failure
        return EventStream(response)

    def close(self) -> None:
        self._session.close()

    def _call(
        self, path: str, request: Message | None, response_type: type[Message], *, timeout: float | None = None
    ) -> Message:
        body = request.SerializeToString() if request is not None else b""
        try:
            http = self._session.post(
                self._url + path,
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=self._timeout if timeout is None else timeout,
            )
        except requests.RequestException as error:
            raise BBSError(f"BBS {path}: {error}") from error
        if http.status_code != 200:
            raise _http_error(path, http)
        response = response_type()
        try:
            response.ParseFromString(http.content)
        except DecodeError as error:
            raise BBSError(f"BBS {path}: response is not a {response_type.__name__}") from error
        if response.DESCRIPTOR.fields_by_name.get("error") and response.HasField("error"):
            error = response.error
            raise BBSError(f"BBS {path}: {error_type_name(error.type)}: {error.message}", error_type=error.type)
        return response


class EventStream:
    """The open event stream; iterate for events, `close()` from any thread to end it."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[Event | MalformedEvent]:
        try:
            for sse in parse_events(self._response.iter_content(chunk_size=None)):
                yield decode_event(sse.id, sse.event, sse.data)
        except Exception as error:  # whatever the transport raises, the stream is over; callers see a BBSError
            if not self._response.raw or self._response.raw.closed:
                return
            raise BBSError(f"BBS event stream broke: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        """Ends the stream, unblocking a reader in another thread (closing alone does not interrupt a read)."""
        sock = _socket(self._response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._response.close()


def _socket(response: requests.Response) -> socket.socket | None:
    """The socket a streamed response is read from (urllib3 keeps its connection until it is released)."""
    connection = getattr(response.raw, "connection", None)
    return getattr(connection, "sock", None)


def _http_error(what: str, http: requests.Response) -> BBSError:
    """A non-200 answer: BBS sends a protobuf Error with some (e.g. 500), plain text with others (404, 503)."""
    error_type: int | None = None
    detail = ""
    if http.headers.get("Content-Type", "").startswith("application/x-protobuf"):
        try:
            error = bbs_pb2.Error.FromString(http.content[:65536])
        except Exception:  # noqa: BLE001 - an unparsable body is only less detail
            error = None
        if error is not None:
            error_type = error.type
            detail = f": {error_type_name(error.type)}: {error.message}"
    return BBSError(f"BBS {what}: HTTP {http.status_code}{detail}", error_type=error_type)


def decode_event(event_id: str, event_type: str, data: str) -> Event | MalformedEvent:
    """Decodes one SSE event into its protobuf message; a bad payload becomes a MalformedEvent value."""
    message_type = EVENT_TYPES.get(event_type)
    if message_type is None:
        report_unrecognized("event", event_type[:100], f"event {event_id}")
        return MalformedEvent(f"event {event_id}: unknown type {event_type!r}", event_type=event_type, reason="unknown type")
    try:
        message = message_type.FromString(base64.b64decode(data, validate=True))
    except Exception as error:  # ValueError (base64), DecodeError, or anything protobuf raises on hostile input
        return MalformedEvent(
            f"event {event_id} ({event_type}): undecodable payload: {error}", event_type=event_type, reason="undecodable payload"
        )
    return Event(event_id, event_type, message)
