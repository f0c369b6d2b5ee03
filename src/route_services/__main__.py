"""`python -m route_services --config F [--check]`: the router's route-service proxy daemon (daemon_kit.cli)."""

from __future__ import annotations

import logging
import sys

from daemon_kit import cli
from route_services.config import Config, load


def _start(config: Config) -> cli.Daemon:
    from route_services.proxy import RouteServiceProxy  # cryptography only when serving

    proxy = RouteServiceProxy(config)  # OSError, ValueError: unreadable or mismatched TLS files
    proxy.start()
    logging.getLogger("route_services").info(
        "route-service proxy on %s:%d, verified requests to %s:%d, route services %s",
        *config.listen,
        *config.gateway,
        "on" if config.secret else "off (no secret): every request gets 502",
    )
    return proxy


def _check(config: Config) -> list[str]:
    return [f"config ok (route services {'on' if config.secret else 'off: no secret'})"]


DESCRIPTION = "The router's route-service proxy (gorouter's route service protocol)."
main = cli.Program("route-services", DESCRIPTION, load, _start, _check, "path to the JSON config file").main


if __name__ == "__main__":
    sys.exit(main())
