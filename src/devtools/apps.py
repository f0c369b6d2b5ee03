"""Sample app instances: small HTTP servers on loopback that answer with their instance guid (and the
request headers, as JSON on /headers; a JSESSIONID cookie on /session; a WebSocket echo on any path
asked to upgrade), standing in for what Diego would run in containers. `H2cApp` is one that speaks only
HTTP/2 cleartext (prior knowledge), for routes whose protocol is http2; `TcpEchoApp` one for TCP routes.
`python -m devtools.apps --guid G [--port N] [--port-file F]` runs one as a process."""

from __future__ import annotations

import json
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devtools import peers, websocket
from devtools.ports import free_port, wait_for_port
from devtools.processes import ManagedProcess


class AppInstance:
    def __init__(
        self,
        instance_guid: str,
        host: str = "127.0.0.1",
        port: int = 0,
        static_dir: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls` = (certificate, key): serve HTTPS, as a platform component's TLS port or an instance's TLS proxy."""
        guid = instance_guid
        index_page = (static_dir / "index.html").read_bytes() if static_dir else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    self._websocket()
                    return
                if self.path.endswith("/headers"):
                    body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                elif index_page is not None:
                    body = index_page
                else:
                    body = f"{guid}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Instance-Guid", guid)
                if self.path.endswith("/session"):
                    self.send_header("Set-Cookie", f"JSESSIONID={guid}-session; Path=/")
                self.end_headers()
                self.wfile.write(body)

            def _websocket(self) -> None:
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", websocket.accept_key(self.headers.get("Sec-WebSocket-Key", "")))
                self.end_headers()
                self.wfile.flush()
                websocket.serve_echo(self.rfile, self.wfile, f"{guid}:".encode())
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.instance_guid = instance_guid
        self._server = ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"app-{guid}", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class EnvoyApp:
    """An app instance that is an Envoy answering every request itself with `<guid>` and
    `X-App-Protocol` (a direct response): `codec` "HTTP2" speaks only HTTP/2 over cleartext (an HTTP/1.1
    request fails), "HTTP1" only HTTP/1.1. Costs a fraction of a Python app per request, so a benchmark
    through the router measures the router."""

    kind = "envoy-app"

    def __init__(
        self, instance_guid: str, workdir: Path, *, host: str = "127.0.0.1", port: int = 0, codec: str = "HTTP1"
    ) -> None:
        """Listens on `host:port` (`port` 0: a free one); its Envoy's admin is on a free 127.0.0.1 port."""
        if codec not in ("HTTP1", "HTTP2"):
            raise ValueError(f"codec {codec!r}: HTTP1 or HTTP2")
        self.instance_guid = instance_guid
        self.host = host
        self.port = port or free_port(host)
        admin = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": f"{instance_guid}\n"}},
            "response_headers_to_add": [
                {"header": {"key": "x-app-protocol", "value": "%PROTOCOL%"}},
                {"header": {"key": "x-instance-guid", "value": instance_guid}},
            ],
        }
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "app",
            "codec_type": codec,
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [route]}]},
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        }
        listener = {
            "name": "app",
            "address": {"socket_address": {"address": host, "port_value": self.port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
        }
        config = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [listener]},
        }
        path = workdir / f"{instance_guid}.json"
        path.write_text(json.dumps(config))
        argv = [str(peers.envoy()), "-c", str(path), "--base-id", str(admin), "--log-level", "error"]
        name = f"{self.kind}-{instance_guid}"
        self.process = ManagedProcess(name, argv, workdir / f"{instance_guid}.log").start()
        if not wait_for_port(self.port, host=host, timeout=30):
            self.process.stop()
            raise RuntimeError(f"{name} did not start:\n{self.process.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def stop(self) -> None:
        self.process.stop()


class H2cApp(EnvoyApp):
    """An app instance that speaks only HTTP/2 over cleartext (an Envoy whose only codec is HTTP/2): an
    HTTP/1.1 request fails, an h2c one gets `<guid>` and `X-App-Protocol: HTTP/2`."""

    kind = "h2c"

    def __init__(self, instance_guid: str, workdir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(instance_guid, workdir, host=host, port=port, codec="HTTP2")


class TcpEchoApp:
    """An app instance for TCP routes: answers every line it receives with `<guid>:<line>` (so a client
    sees which instance it reached), until the client closes."""

    def __init__(self, instance_guid: str, host: str = "127.0.0.1", port: int = 0) -> None:
        prefix = f"{instance_guid}:".encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    self.wfile.write(prefix + line)
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.instance_guid = instance_guid
        self._server = Server((host, port), Handler)
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"tcp-echo-{instance_guid}", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m devtools.apps", description="Run one sample app instance.")
    parser.add_argument("--guid", required=True, help="instance guid the app answers with")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: any free port)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--static-dir", type=Path, help="serve this directory's index.html instead of the guid")
    args = parser.parse_args(argv)
    app = AppInstance(args.guid, port=args.port, static_dir=args.static_dir)
    if args.port_file:
        args.port_file.write_text(str(app.port))
    print(f"sample app {args.guid} on 127.0.0.1:{app.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
