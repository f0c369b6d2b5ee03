"""Sample app instances: small HTTP servers on loopback that answer with their instance guid (and the
request headers, as JSON on /headers), standing in for what Diego would run in containers.
`python -m devtools.apps --guid G [--port N] [--port-file F]` runs one as a process."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class AppInstance:
    def __init__(self, instance_guid: str, host: str = "127.0.0.1", port: int = 0, static_dir: Path | None = None) -> None:
        guid = instance_guid
        index_page = (static_dir / "index.html").read_bytes() if static_dir else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
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
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.instance_guid = instance_guid
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"app-{guid}", daemon=True).start()

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
