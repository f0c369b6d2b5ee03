"""Copilot's settings: every option of its configuration file as typed, frozen objects whose
constructors list each option with its default (copilot.config parses the file into them; the builder
reads GatewaySettings and the types it holds). No parsing and no I/O here."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from copilot.istio.shards import DEFAULT_SHARDS, SHARD_LABEL, RouterShard, suffix
from copilot.protos import istio_networking_pb2 as pb
from copilot.router_groups_api import RouterGroup, router_group
from copilot.uaa_token import RSAPublicKey

# The routers' minimum TLS versions, by the name the config gives.
TLS_VERSIONS = {"1.2": pb.ServerTLSSettings.TLSV1_2, "1.3": pb.ServerTLSSettings.TLSV1_3}
# The loopback Gateway the route-service proxy hands verified requests back to (GatewaySettings.route_services).
ROUTE_SERVICE_GATEWAY_NAME = "cf-route-services"


@dataclass(frozen=True)
class Certificate:
    """A router certificate: served for SNI names `hosts`; its files are `<certificate_dir>/<name>.crt`
    and `.key` on the router, which the router's SDS server serves under istiod's file-cert name."""

    name: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking by the routers (Envoy outlier detection on every app and platform
    cluster), as gorouter stops using an endpoint it failed to reach: after `consecutive_failures`
    locally originated failures in a row on one endpoint (connection refused or timed out, reset before
    a response, TLS handshake or certificate check failed) the routers send it nothing for
    `base_ejection_seconds` times the number of its ejections (Envoy caps that at 300 s), then try it
    again. Responses never count, 5xx included: an app's own 502/503 reaches its client as with
    gorouter. At most `max_ejection_percent` of a cluster is ejected, and below `min_health_percent`
    of it healthy the routers use every endpoint again (Envoy's panic mode), so an app whose instances
    are all ejected, a one-instance app among them, keeps being tried. `consecutive_failures` 0: off."""

    consecutive_failures: int = 3
    base_ejection_seconds: float = 30.0
    max_ejection_percent: int = 100
    min_health_percent: int = 1


@dataclass(frozen=True)
class RouteServiceSettings:
    """Route services on: the loopback ports of the routers' route-service proxy (proxy_port) and of the
    Gateway server it hands requests back to once their route service returned them (gateway_port)."""

    proxy_port: int = 7070
    gateway_port: int = 7071
    # gorouter's route_services_internal_lookup (and its allowlist: FQDNs or *.domain, empty = every
    # route): a route service URL that is a route of this foundation is reached through the router
    # itself, not through DNS and the load balancer (copilot.route_service_lookup decides).
    internal_lookup: bool = False
    internal_lookup_allowlist: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewaySettings:
    """Where the router's Gateway lives and what it listens on."""

    namespace: str = "istio-system"
    name: str = "cf-ingress"
    selector: dict[str, str] = field(default_factory=lambda: {"app": "istio-router"})
    http_port: int = 80
    # The address the router's listeners bind ("" = every address, as a router behind a load balancer needs).
    bind: str = ""
    # CA bundle, as a path on the router, that verifies backends reached over TLS (platform routes with
    # a tls_port). Without it such backends are skipped rather than reached unverified.
    upstream_ca_file: str = ""
    # HTTPS: a server per certificate on https_port (0 = no HTTPS); the first certificate also answers
    # clients whose SNI names none of them, as gorouter's first tls_pem entry does.
    https_port: int = 0
    certificates: tuple[Certificate, ...] = ()
    certificate_dir: str = "/var/vcap/jobs/istio-router/config/certs"
    tls_min_version: str = "1.2"
    tls_cipher_suites: tuple[str, ...] = ()
    # Proxies in front of the routers (a load balancer terminating TLS) whose X-Forwarded-Proto and
    # X-Forwarded-For the routers trust (Envoy's xff_num_trusted_hops). 0: the routers set
    # X-Forwarded-Proto from their own connection (gorouter's sanitize_forwarded_proto: true).
    trusted_proxy_hops: int = 0
    # gorouter's router.enable_http2. False: clients get HTTP/1.1 only (ALPN without h2 on HTTPS, no h2c
    # on HTTP) and the apps of http2 routes are reached over HTTP/1.1 (router_filter.Http1Only).
    enable_http2: bool = True
    # Cookies that make a session sticky (gorouter's sticky_session_cookie_names).
    sticky_session_cookies: tuple[str, ...] = ("JSESSIONID",)
    # X-CF-App-Instance: a DestinationRule subset (an Envoy cluster) and a route per app instance so a
    # client can pick one. Off by default: an instance starting or stopping then changes the host's
    # VirtualService and DestinationRule (a full istiod push) instead of only its endpoints (EDS).
    instance_routing: bool = False
    # Route integrity: the Diego instance-identity CA, as a path on the router. When set, an instance
    # with a TLS proxy port is reached over TLS on that port, and only if its certificate names that
    # instance's guid: a stale address now held by another instance answers 503 (or the request goes
    # to another instance), never that instance's response. One cluster per process, and an instance
    # coming or going changes only endpoints.
    instance_identity_ca_file: str = ""
    # The client certificate the router presents to instances' TLS proxies and TCP backends, by name in
    # certificate_dir (v58 cells refuse a router without one). "" = none.
    backend_client_certificate: str = ""
    # How the routers stop sending requests to an endpoint that fails (see OutlierDetection).
    outlier_detection: OutlierDetection = field(default_factory=OutlierDetection)
    # Route services (gorouter's protocol, through the routers' route-service proxy). None: a route
    # bound to a route service fails closed, as gorouter without route_services_secret.
    route_services: RouteServiceSettings | None = None
    # Router shards (shards.py): a Gateway per shard, each host bound to the shards that route it.
    router_shards: tuple[RouterShard, ...] = DEFAULT_SHARDS

    @functools.cached_property
    def sharded(self) -> bool:
        """Whether shards are configured (anything but the default single shard `all`); asked per host."""
        return self.router_shards != DEFAULT_SHARDS

    @property
    def ref(self) -> str:
        """The first shard's Gateway (the only one by default)."""
        return f"{self.namespace}/{self.name}"

    @property
    def route_services_ref(self) -> str:
        return f"{self.namespace}/{ROUTE_SERVICE_GATEWAY_NAME}"

    def shard_ref(self, index: int) -> str:
        """The Gateway of shard `index`: gateway.name for the first, `<name>-<shard>` for the others."""
        return self.ref if index == 0 else f"{self.ref}-{suffix(self.router_shards[index])}"

    def shard_route_services_ref(self, index: int) -> str:
        base = self.route_services_ref
        return base if index == 0 else f"{base}-{suffix(self.router_shards[index])}"

    def shard_selector(self, index: int) -> dict[str, str]:
        """The labels of shard `index`'s routers: gateway.selector, plus the shard label once shards
        are configured (so each router is selected by its own shard's Gateways only)."""
        if not self.sharded:
            return self.selector
        return {**self.selector, SHARD_LABEL: self.router_shards[index].name}

    def shard_bind(self, index: int) -> str:
        return self.router_shards[index].bind or self.bind


@dataclass(frozen=True, kw_only=True)
class TLSServerConfig:
    """A server certificate and its key (Copilot's MCP listener with TLS)."""

    cert: Path
    key: Path


@dataclass(frozen=True, kw_only=True)
class BBSConfig:
    """Diego's BBS, read over mutual TLS: event stream, listings every reconcile interval."""

    url: str
    ca_cert: Path
    client_cert: Path
    client_key: Path
    reconcile_interval_seconds: float = 30.0
    max_backoff_seconds: float = 10.0
    liveness_check_interval_seconds: float = 5.0
    # A listing withdrawing more than `fraction` of the routed instances (or desired LRPs), and at
    # least `minimum` of them, is held this long (0: never) unless BBS lists its state again.
    withdrawal_hold_seconds: float = 120.0
    withdrawal_hold_fraction: float = 0.5
    withdrawal_hold_minimum: int = 3


@dataclass(frozen=True, kw_only=True)
class MutualTLSServerConfig:
    """One of Copilot's HTTPS APIs: where it listens, its certificate and key, and the CA its clients'
    certificates must be signed by (mutual TLS)."""

    listen: str
    cert: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True, kw_only=True)
class CCConfig(MutualTLSServerConfig):
    """The Cloud Controller API (api.CloudControllerCopilot)."""

    listen: str = "0.0.0.0:9001"  # the copilot job spec's cc.listen_address
    # How long istiod waits for Cloud Controller's first BulkSync before BBS routes alone are served.
    bulk_sync_hold_seconds: float = 60.0


@dataclass(frozen=True, kw_only=True)
class RegistrarConfig(MutualTLSServerConfig):
    """Where our route_registrar jobs register platform routes."""

    listen: str = "0.0.0.0:9003"  # the copilot job spec's registrar.listen_address


@dataclass(frozen=True, kw_only=True)
class ServiceDiscoveryConfig(MutualTLSServerConfig):
    """The `*.apps.internal` lookup API bosh-dns-adapter calls (service-discovery-controller's, see
    service_discovery.py)."""

    listen: str = "0.0.0.0:8054"  # the copilot job spec's service_discovery.listen_address


# routing-api's default router group in cf-deployment v58 (the copilot job spec's routing_api.router_groups).
DEFAULT_ROUTER_GROUPS = (router_group("default-tcp", "tcp", "1024-1033"),)


@dataclass(frozen=True, kw_only=True)
class RoutingApiConfig:
    """routing-api's router groups for Cloud Controller and the cf CLI (router_groups_api.py): HTTPS,
    requests authorized by UAA tokens signed with one of `uaa_verification_keys` and issued by `uaa_issuer`."""

    cert: Path
    key: Path
    uaa_issuer: str
    uaa_verification_keys: tuple[RSAPublicKey, ...]
    listen: str = "0.0.0.0:3001"  # the copilot job spec's routing_api.listen_address
    router_groups: tuple[RouterGroup, ...] = DEFAULT_ROUTER_GROUPS


@dataclass(frozen=True)
class BackendsConfig:
    """Which backend addresses routes may reach. Loopback, link-local and unspecified addresses are
    refused (copilot.model.INTERNAL_NETWORKS) unless one of `allowed_internal_networks` (CIDRs)
    contains them."""

    allowed_internal_networks: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole file; a section left out is None (that source or API off) or its defaults."""

    bbs: BBSConfig | None = None
    mcp_listen: str = "127.0.0.1:15030"
    mcp_tls: TLSServerConfig | None = None
    # Seconds a service no route uses is kept before its deletion (copilot.publisher; job property
    # mcp.service_removal_delay_seconds).
    service_removal_delay: float = 30.0
    health_listen: str = "127.0.0.1:8787"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    log_level: str = "info"
    cc: CCConfig | None = None
    registrar: RegistrarConfig | None = None
    service_discovery: ServiceDiscoveryConfig | None = None
    routing_api: RoutingApiConfig | None = None
    backends: BackendsConfig = field(default_factory=BackendsConfig)
