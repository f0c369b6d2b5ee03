"""python -m router_sds --config F [--check]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from router_sds.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router-sds", description="Serves the router's TLS certificates to Envoy over SDS.")
    parser.add_argument("--config", required=True, help="path to the YAML or JSON config file")
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"router-sds: invalid config: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(f"config ok ({len(config.certificates)} certificates)")
        return 0
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from router_sds.server import SdsServer  # grpc only when serving

    server = SdsServer(config)
    try:
        server.start()
    except (OSError, RuntimeError) as error:
        logging.getLogger("router_sds").error("cannot start: %s", error)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
