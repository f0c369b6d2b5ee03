"""Writing one complete HTTP answer from an `http.server` request handler: status (with the Date and
Server headers `send_response` adds), Content-Type, Content-Length, any extra headers, then the body
(JSON-encoded unless it is bytes already)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler

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
