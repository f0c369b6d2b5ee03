"""The `copilot` command: wires config, sources, routing table, publisher and the MCP server together."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import grpc

from copilot import logs, metrics
from copilot.config import Config, ConfigError, load
from copilot.health import HealthServer
from copilot.publisher import Publisher
from copilot.routing_table import RoutingTable
from copilot.sources.bbs_client import BBSClient, TLSFiles
from copilot.sources.bbs_watcher import BBSWatcher
from copilot.xds.mcp_server import McpServer
from copilot.xds.snapshot import Snapshot

log = logging.getLogger("copilot")


class Copilot:
    """A running Copilot; `start()` returns once it listens, `stop()` tears everything down."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = RoutingTable()
        self.snapshot = Snapshot()
        self.publisher = Publisher(self.table, self.snapshot, config.gateway)
        self.watcher: BBSWatcher | None = None
        if config.bbs is not None:
            client = BBSClient(config.bbs.url, TLSFiles(config.bbs.ca_cert, config.bbs.client_cert, config.bbs.client_key))
            self.watcher = BBSWatcher(
                client,
                self.table,
                self.publish,
                reconcile_interval=config.bbs.reconcile_interval_seconds,
                max_backoff=config.bbs.max_backoff_seconds,
            )
        self.mcp = McpServer(self.snapshot, on_push=_record_push, ready=self.watcher.synced if self.watcher else None)
        self.health = HealthServer(config.health_listen, self.status, self.refresh_metrics)

    def publish(self) -> None:
        with metrics.PUBLISH_SECONDS.time():
            self.publisher.publish()

    def start(self) -> None:
        credentials = None
        if self.config.mcp_tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(self.config.mcp_tls.key.read_bytes(), self.config.mcp_tls.cert.read_bytes())]
            )
        port = self.mcp.start(self.config.mcp_listen, credentials)
        self.health.start()
        if self.watcher is not None:
            self.watcher.start()
        log.info("copilot started", extra={"mcp_port": port, "health_port": self.health.port, "tls": credentials is not None})

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.mcp.stop()
        self.health.stop()

    def status(self) -> tuple[bool, dict]:
        synced = self.watcher is None or self.watcher.synced.is_set()
        staleness = self.watcher.staleness() if self.watcher is not None else 0.0
        routes, backends = self.table.counts()
        return True, {
            "status": "ok",
            "bbs_synced": synced,
            "bbs_staleness_seconds": round(staleness, 3),
            "routes": routes,
            "backends": backends,
            "istiod_streams": self.mcp.stream_count(),
        }

    def refresh_metrics(self) -> None:
        routes, backends = self.table.counts()
        metrics.ROUTES.set(routes)
        metrics.BACKENDS.set(backends)
        if self.watcher is not None:
            metrics.BBS_STALENESS.set(self.watcher.staleness())


def _record_push(type_url: str, count: int, seconds: float) -> None:
    metrics.PUSHES.labels(type_url).inc()
    if seconds:
        metrics.PUSH_LATENCY.observe(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="copilot", description="Feeds istiod with Cloud Foundry routes over MCP-over-xDS.")
    parser.add_argument("--config", required=True, help="path to the YAML or JSON config file")
    parser.add_argument("--check", action="store_true", help="validate the config file and exit")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"copilot: invalid config: {error}", file=sys.stderr)
        return 2
    if args.check:
        print("config ok")
        return 0
    logs.configure(config.log_level)
    copilot = Copilot(config)
    try:
        copilot.start()
    except OSError as error:
        log.error("cannot start", extra={"error": str(error)})
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("copilot stopping")
    copilot.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
