"""`python -m route_registrar --config F [--check]`: the istio-route-registrar daemon (daemon_kit.cli)."""

from __future__ import annotations

import sys

from daemon_kit import cli
from route_registrar.config import Config, load


def _check(config: Config) -> list[str]:
    from route_registrar.registrar import describe

    return [*describe(config), f"config ok ({len(config.routes)} routes)"]


def _start(config: Config) -> cli.Daemon:
    from route_registrar.registrar import Registrar

    registrar = Registrar(config)  # OSError, ValueError: unreadable or mismatched TLS files
    registrar.start()
    return registrar


DESCRIPTION = (
    "Registers this VM's platform routes with Copilot's registrar API (mutual TLS), renewing them while their health"
    " checks pass; deregisters them on SIGTERM."
)
CONFIG_HELP = "path to the JSON config the istio-route-registrar job renders"
main = cli.Program("istio-route-registrar", DESCRIPTION, load, _start, _check, CONFIG_HELP).main


if __name__ == "__main__":
    sys.exit(main())
