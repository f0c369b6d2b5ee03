"""The HTTP endpoint for operators, load balancers and monitors: /health (readiness, JSON), /live
(liveness, JSON) and /metrics (Prometheus).

- `/health` answers 200 only while Copilot serves istiod (BBS listed, first snapshot published, not
  stopping) and 503 otherwise, always with the same JSON body: the status says why.
- `/live` answers 200 while the process works (this server answers, and the liveness callback finds
  nothing broken), whether or not Copilot is ready: restart on /live, route or alert on /health.
"""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from prometheus_client import exposition

from copilot.metrics import REGISTRY
from daemon_kit.httpd import Server, reply

Status = Callable[[], tuple[bool, dict]]


def _always_live() -> tuple[bool, dict]:
    return True, {"live": True}


class HealthServer(Server):
    def __init__(
        self, address: str, status: Status, before_scrape: Callable[[], None], live: Status = _always_live
    ) -> None:
        """`status` is readiness (ready, details) for /health, `live` liveness (live, details) for /live."""
        host, _, port = address.rpartition(":")
        status_fn, live_fn, refresh = status, live, before_scrape

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path in ("/health", "/live"):
                    ok, details = (status_fn if path == "/health" else live_fn)()
                    reply(self, 200 if ok else 503, details)
                elif path == "/metrics":
                    refresh()
                    reply(self, 200, exposition.generate_latest(REGISTRY), exposition.CONTENT_TYPE_LATEST)
                else:
                    reply(self, 404, b"not found\n", "text/plain")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(host, int(port), Handler, "health")
