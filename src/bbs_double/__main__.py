"""Run a BBS double standalone: `python -m bbs_double --ca-cert F --cert F --key F [--port N]`.

It serves until SIGINT or SIGTERM, with no LRPs; drive it from Python, or with `--admin-port` over
a loopback JSON API (bbs_double.admin). The first line on stdout is its URL, so scripts can wait for it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from bbs_double.admin import AdminServer
from bbs_double.server import BBSDouble


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until a signal arrives, stop cleanly; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bbs_double", description=(__doc__ or " ").splitlines()[0])
    parser.add_argument("--ca-cert", type=Path, required=True, help="CA that signs accepted client certificates")
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="server private key (PEM)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0: any free port)")
    parser.add_argument("--admin-port", type=int, help="also serve the JSON control API (bbs_double.admin) on this loopback port")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr)

    double = BBSDouble(ca_cert=args.ca_cert, server_cert=args.cert, server_key=args.key, host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    double.start()
    admin = AdminServer(double, args.admin_port) if args.admin_port is not None else None
    if admin is not None:
        admin.start()
    print(double.url, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if admin is not None:
            admin.stop()
        double.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
