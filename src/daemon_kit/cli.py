"""A daemon's command (`Program.main`): `--config F [--check]`, then serving until SIGTERM or SIGINT.

A config that does not load (a `ConfigError`) is printed as `<prog>: invalid config: <why>` on stderr
and exits 2; `--check` prints the daemon's summary of the config and exits 0. Otherwise logging is set
up (JSON lines, daemon_kit.logs) at the config's `log_level`, the daemon is started, and on the first
SIGTERM or SIGINT stopped, exiting 0. A daemon that cannot start (a port taken, an unreadable or
mismatched TLS file: OSError, ValueError or RuntimeError from `start`) logs why and exits 1."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from daemon_kit import logs
from daemon_kit.config import ConfigError

C = TypeVar("C")


class Daemon(Protocol):
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Program(Generic[C]):
    """A daemon's command: `load(path)` reads its config (which has a `log_level`: debug, info, warning
    or error), `start(config)` starts serving and returns what `stop()` tears down, `check(config)` gives
    the lines `--check` prints."""

    prog: str
    description: str
    load: Callable[[str], C]
    start: Callable[[C], Daemon]
    check: Callable[[C], Iterable[str]] = lambda config: ["config ok"]
    config_help: str = "path to the YAML or JSON config file"

    def main(self, argv: list[str] | None = None) -> int:
        """Runs the command with `argv` (default: sys.argv[1:]); returns the exit status."""
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        parser.add_argument("--config", required=True, help=self.config_help)
        parser.add_argument("--check", action="store_true", help="validate the config file, print a summary and exit")
        args = parser.parse_args(argv)
        try:
            config: Any = self.load(args.config)
        except ConfigError as error:
            print(f"{self.prog}: invalid config: {error}", file=sys.stderr)
            return 2
        if args.check:
            for line in self.check(config):
                print(line)
            return 0
        logs.configure(config.log_level)
        return self._serve(config)

    def _serve(self, config: C) -> int:
        log = logging.getLogger(self.prog)
        done = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                daemon = self.start(config)
            except (OSError, ValueError, RuntimeError) as error:
                log.error("cannot start", extra={"error": str(error)})
                return 1
            done.wait()
            log.info(f"{self.prog} stopping")
            daemon.stop()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
