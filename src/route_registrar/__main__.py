"""python -m route_registrar --config F [--check]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from route_registrar.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="istio-route-registrar",
        description="Registers this VM's platform routes with Copilot's registrar API (mutual TLS), renewing them "
        "while their health checks pass; deregisters them on SIGTERM.",
    )
    parser.add_argument("--config", required=True, help="path to the JSON config the istio-route-registrar job renders")
    parser.add_argument("--check", action="store_true", help="validate the config, print the registrations and exit")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"istio-route-registrar: invalid config: {error}", file=sys.stderr)
        return 2
    from route_registrar.registrar import Registrar, describe

    if args.check:
        for line in describe(config):
            print(line)
        print(f"config ok ({len(config.routes)} routes)")
        return 0
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        registrar = Registrar(config)
    except (OSError, ValueError) as error:  # unreadable or mismatched certificate files
        logging.getLogger("route_registrar").error("cannot load the TLS files: %s", error)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    registrar.start()
    done.wait()
    registrar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
