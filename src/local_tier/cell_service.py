"""The local tier's Diego cell: a `devtools.cell.Cell` (every instance behind a v58 container proxy) with
the PKI the local manifest generated, behind a loopback-only JSON control API that `cf-local` uses.
supervisor runs it as the program `cell`:

    POST   /instances          {"instance_guid", "app" ("http"|"h2c"|"tcp-echo"), "static_dir"}
                               -> the net info the rep reports (keyword arguments of BBSDouble.start_instance)
    DELETE /instances/<guid>   stops the instance and its proxy
    GET    /instances          the guids running

`python -m local_tier.cell_service --root .local --port N`"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from daemon_kit.httpd import reply
from devtools.cell import Cell, CellPKI
from devtools.certs import CA
from local_tier import render
from local_tier.layout import Layout


def cell_pki(layout: Layout) -> CellPKI:
    """The cell's certificates from the local tier's vars store (as cf-deployment v58 names them)."""
    variables = render.variables(layout)
    directory = layout.pki / "cell"

    def ca(name: str) -> CA:
        return CA.from_pem(directory, name, variables[name]["certificate"], variables[name]["private_key"])

    identity = ca("diego_instance_identity_ca")
    return CellPKI.from_files(
        identity_ca_cert=identity.cert_path,
        identity_ca_key=identity.key_path,
        root_ca_cert=ca("application_ca").cert_path,
        trusted_ca_certificates=[ca("service_cf_internal_ca").cert_path],
    )


def serve(cell: Cell, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: object) -> None:
            reply(self, status, body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply(200, sorted(cell.instances))

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                static_dir = Path(body["static_dir"]) if body.get("static_dir") else None
                with lock:
                    instance = cell.start_instance(body["instance_guid"], app=body.get("app", "http"), static_dir=static_dir)
            except (KeyError, ValueError, TypeError, RuntimeError) as error:
                self._reply(400, {"error": str(error)})
                return
            self._reply(200, instance.net_info())

        def do_DELETE(self) -> None:  # noqa: N802
            guid = self.path.rsplit("/", 1)[-1]
            instance = cell.instances.get(guid)
            if instance is None:
                self._reply(404, {"error": f"no instance {guid}"})
                return
            instance.stop()
            self._reply(200, {"stopped": guid})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="cell-admin", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_tier.cell_service", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the local tier's root (its vars store and cells)")
    parser.add_argument("--port", type=int, required=True, help="loopback port of the control API")
    args = parser.parse_args(argv)
    layout = Layout(args.root.resolve())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Cell(layout.root / "cells" / "cell-1", cell_pki(layout)) as cell:
        server = serve(cell, args.port)
        print(f"cell on 127.0.0.1, control API http://127.0.0.1:{args.port}", flush=True)
        stop.wait()
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
