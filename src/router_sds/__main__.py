"""`python -m router_sds --config F [--check]`: the router's SDS server daemon (daemon_kit.cli)."""

from __future__ import annotations

import sys

from daemon_kit import cli
from router_sds.config import Config, load


def _start(config: Config) -> cli.Daemon:
    from router_sds.server import SdsServer  # grpc only when serving

    server = SdsServer(config)
    server.start()  # OSError, RuntimeError: the socket or port cannot be bound
    return server


def _check(config: Config) -> list[str]:
    return [f"config ok ({len(config.certificates)} certificates)"]


main = cli.Program("router-sds", "Serves the router's TLS certificates to Envoy over SDS.", load, _start, _check).main


if __name__ == "__main__":
    sys.exit(main())
