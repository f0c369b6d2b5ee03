"""The `copilot` command: wires config, sources, their slices and views, publisher and the MCP server together."""

from __future__ import annotations

import logging
import sys
import threading

import grpc

from copilot import metrics, model
from copilot.config import Config, load
from copilot.health import HealthServer
from copilot.publisher import Publisher, PublishLoop
from copilot.router_groups_api import RouterGroupsServer
from copilot.service_discovery import AddressTable, ServiceDiscoveryServer
from copilot.sources.bbs_client import BBSClient, TLSFiles
from copilot.sources.bbs_watcher import BBSWatcher
from copilot.sources.cc_api import CloudControllerCopilot
from copilot.sources.cc_api import serve as serve_cc_api
from copilot.sources.registrar_api import RegistrarApi
from copilot.uaa_token import TokenValidator
from copilot.views import Views
from copilot.xds.mcp_server import McpServer
from copilot.xds.store import Store
from daemon_kit import cli

log = logging.getLogger("copilot")


class Copilot:
    """A running Copilot; `start()` returns once it listens, `stop()` tears everything down."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Every source refuses loopback/link-local backends unless the operator's allow-list names them.
        model.allow_internal_networks(config.backends.allowed_internal_networks)
        # istiod gets no answer until the sources have been read: BBS listed, and (with CC) the first
        # BulkSync applied or bulk_sync_hold_seconds passed, then `store.release()`. A restart never
        # announces an empty world.
        self.mcp = McpServer(on_push=_record_push, on_nack=_record_nack)
        self.store = Store()
        self.store.watch(self.mcp.serve)
        # Each source writes its own slice and asks the publisher thread for a publish (`request`).
        self.views = Views()
        self.publisher = Publisher(self.views, self.store, config.gateway, service_removal_delay=config.service_removal_delay)
        self.publish_loop = PublishLoop(self.publisher.publish, self.publisher.due)
        request = self.publish_loop.request
        self.watcher: BBSWatcher | None = None
        if config.bbs is not None:
            client = BBSClient(config.bbs.url, TLSFiles(config.bbs.ca_cert, config.bbs.client_cert, config.bbs.client_key))
            self.watcher = BBSWatcher(client, self.views.bbs, request, config.bbs)
        self.cc_api = CloudControllerCopilot(self.views.cc, request) if config.cc is not None else None
        self._cc_server = None
        self.registrar = None
        if config.registrar is not None:
            r = config.registrar
            self.registrar = RegistrarApi(self.views.registrar, request, r)
        # *.apps.internal for bosh-dns-adapter: not warm until the first full BBS listing is applied.
        self.service_discovery = None
        if config.service_discovery is not None:
            sd, watcher = config.service_discovery, self.watcher
            addresses = AddressTable(self.views.bbs, watcher.synced.is_set if watcher is not None else lambda: True)
            self.views.bbs.watch(addresses.invalidate)  # its next answer is built from the changed slice
            self.service_discovery = ServiceDiscoveryServer(addresses, sd)
        self.routing_api: RouterGroupsServer | None = None
        if config.routing_api is not None:  # routing-api's router groups, for Cloud Controller and the cf CLI
            ra = config.routing_api
            validator = TokenValidator(ra.uaa_verification_keys, ra.uaa_issuer)
            self.routing_api = RouterGroupsServer(ra.listen, ra.router_groups, validator, cert=ra.cert, key=ra.key)
        self._stopping = threading.Event()
        self.health = HealthServer(config.health_listen, self.status, self.refresh_metrics, live=self.live)

    def start(self) -> None:
        credentials = None
        if self.config.mcp_tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(self.config.mcp_tls.key.read_bytes(), self.config.mcp_tls.cert.read_bytes())]
            )
        port = self.mcp.start(self.config.mcp_listen, credentials)
        if self.cc_api is not None:
            cc = self.config.cc
            self._cc_server, cc_port = serve_cc_api(
                self.cc_api, cc.listen, cert=cc.cert.read_bytes(), key=cc.key.read_bytes(), client_ca=cc.client_ca.read_bytes()
            )
            log.info("cloud controller api listening", extra={"port": cc_port})
        if self.registrar is not None:
            self.registrar.start()
            log.info("registrar api listening", extra={"port": self.registrar.port})
        if self.service_discovery is not None:
            self.service_discovery.start()
            log.info("service discovery listening", extra={"port": self.service_discovery.port})
        if self.routing_api is not None:
            self.routing_api.start()
            log.info("router groups api listening", extra={"port": self.routing_api.port})
        threading.Thread(target=self._become_ready, name="ready", daemon=True).start()
        self.health.start()
        if self.watcher is not None:
            self.watcher.start()
        log.info("copilot started", extra={"mcp_port": port, "health_port": self.health.port, "tls": credentials is not None})

    def _become_ready(self) -> None:
        if self.watcher is not None:
            self.watcher.synced.wait()
        if self.cc_api is not None and not self.cc_api.bulk_synced.wait(self.config.cc.bulk_sync_hold_seconds):
            log.warning(
                "no BulkSync from Cloud Controller yet; serving BBS routes",
                extra={"waited": self.config.cc.bulk_sync_hold_seconds},
            )
        self.publish_loop.publish_now()  # what the sources said is in the store before istiod hears anything
        self.store.release()
        log.info("serving istiod")

    def stop(self) -> None:
        self._stopping.set()  # /health answers 503 from now on; /live until the health server goes, last
        if self.registrar is not None:
            self.registrar.stop()
        if self.service_discovery is not None:
            self.service_discovery.stop()
        if self.routing_api is not None:
            self.routing_api.stop()
        if self._cc_server is not None:
            self._cc_server.stop(0.5).wait()
        if self.watcher is not None:
            self.watcher.stop()
        self.publish_loop.stop()
        self.mcp.stop()
        self.health.stop()

    def status(self) -> tuple[bool, dict]:
        """Readiness, for /health: ready while istiod is served (BBS listed, and with CC the first BulkSync
        or its hold passed, and that state published) until `stop()` begins. A BBS event stream that went
        down after that keeps Copilot ready, since the last known routes are still served (and every
        Copilot shares the BBS): the status says `bbs_stale` instead of `ok`, with the staleness."""
        stopping = self._stopping.is_set()
        serving = self.store.released
        synced = self.watcher is None or (self.watcher.synced.is_set() and self.watcher.live)
        cc_synced = self.cc_api is None or self.cc_api.bulk_synced.is_set()
        staleness = self.watcher.staleness() if self.watcher is not None else 0.0
        routes, backends = self.views.bbs.counts()
        if stopping:
            state = "stopping"
        elif not serving:
            state = "starting"
        else:
            state = "ok" if synced else "bbs_stale"
        ready = serving and not stopping
        return ready, {
            "status": state,
            "ready": ready,
            "bbs_synced": synced,
            "cc_bulk_synced": cc_synced,
            "serving_istiod": serving,
            "bbs_staleness_seconds": round(staleness, 3),
            "bbs_withdrawal_hold": self.watcher.held_withdrawal() if self.watcher is not None else None,
            "routes": routes,
            "backends": backends,
            "istiod_streams": self.mcp.stream_count(),
        }

    def live(self) -> tuple[bool, dict]:
        """Liveness, for /live: the process answers, ready or not (it never depends on BBS, Cloud
        Controller or istiod, so restarting on it cannot make an outage of theirs worse)."""
        return True, {"live": True, "ready": self.store.released and not self._stopping.is_set()}

    def refresh_metrics(self) -> None:
        routes, backends = self.views.bbs.counts()
        metrics.ROUTES.set(routes)
        metrics.BACKENDS.set(backends)
        if self.watcher is not None:
            metrics.BBS_STALENESS.set(self.watcher.staleness())


def _record_nack(type_url: str) -> None:
    metrics.ISTIOD_NACKS.labels(type_url).inc()


def _record_push(type_url: str, count: int, seconds: float) -> None:
    metrics.PUSHES.labels(type_url).inc()
    if seconds:
        metrics.PUSH_LATENCY.observe(seconds)


def _start(config: Config) -> Copilot:
    copilot = Copilot(config)
    copilot.start()
    return copilot


main = cli.Program("copilot", "Feeds istiod with Cloud Foundry routes over MCP-over-xDS.", load, _start).main


if __name__ == "__main__":
    sys.exit(main())
