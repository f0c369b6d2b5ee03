"""The HTTP endpoint for operators and load balancers: /health (JSON) and /metrics (Prometheus)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import exposition

from copilot.metrics import REGISTRY


class HealthServer:
    def __init__(self, address: str, status: Callable[[], tuple[bool, dict]], before_scrape: Callable[[], None]) -> None:
        host, _, port = address.rpartition(":")
        status_fn, refresh = status, before_scrape

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/health":
                    healthy, details = status_fn()
                    self._send(200 if healthy else 503, "application/json", json.dumps(details).encode())
                elif self.path == "/metrics":
                    refresh()
                    self._send(200, exposition.CONTENT_TYPE_LATEST, exposition.generate_latest(REGISTRY))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
