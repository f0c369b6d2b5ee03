"""python -m route_services --config F [--check]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from route_services.config import ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="route-services", description="The router's route-service proxy (gorouter's route service protocol)."
    )
    parser.add_argument("--config", required=True, help="path to the JSON config file")
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"route-services: invalid config: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(f"config ok (route services {'on' if config.secret else 'off: no secret'})")
        return 0
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from route_services.proxy import RouteServiceProxy  # cryptography only when serving

    logger = logging.getLogger("route_services")
    try:
        proxy = RouteServiceProxy(config)
    except (OSError, ValueError) as error:
        logger.error("cannot start: %s", error)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    proxy.start()
    logger.info(
        "route-service proxy on %s:%d, verified requests to %s:%d, route services %s",
        *config.listen, *config.gateway, "on" if config.secret else "off (no secret): every request gets 502",
    )
    done.wait()
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
