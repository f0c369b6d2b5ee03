"""Small plain-HTTP servers on the standard library: `Server` runs an `http.server` handler class on
its own threads (start, stop, the bound port), and `reply` writes one complete answer from a handler:
status (with the Date and Server headers `send_response` adds), Content-Type, Content-Length, any
extra headers, then the body (JSON-encoded unless it is bytes already)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JSON = "application/json"


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: object,
    content_type: str = JSON,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Answers `status` with `body`: bytes as they are (say what they are in `content_type`), anything
    else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


class Server:
    """`handler` served on `host`:`port` (0: any free port, then `port` says which), a thread per
    request; `start()` serves from a daemon thread named `name`, `stop()` closes the listener."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._name = name
        self.port: int = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name=self._name, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
