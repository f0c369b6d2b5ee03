"""The Diego cell double: app instances behind a real Envoy configured the way Diego's executor configures a
cf-deployment v58 container proxy ("route integrity"). This module is the one place that double lives; tests,
benchmarks, the local run and demos all start instances through it.

What a `Cell` owns, per instance (`start_instance`):
- a container IP of its own on loopback (127.1.0.0/16, locked across processes), so every "container" binds
  :8080, :61001 and :61443 as a real one does;
- the app, bound to containerIP:<container port> (`devtools.apps`: HTTP, h2c, a TCP echo, or an Envoy answering
  HTTP/1.1 itself for benchmarks);
- a per-instance Envoy (`--concurrency 1`) with the executor's config: one L4 `tcp_proxy` listener per container
  port on 61001 up (skipping 61443 and app ports), TLS with the instance identity certificate (CN and DNS SAN =
  instance guid, IP SAN = container IP, chain leaf + intermediate), ciphers ECDHE-RSA-AES{256,128}-GCM, ALPN
  "h2,http/1.1", a required client certificate checked against `id-validation-context` (trusted CAs + exact
  subject alt names); for container port 8080 also the C2C listener 61443 (its own certificate with the internal
  route hostnames, no client certificate, no ALPN). Certificates come from three file SDS files written by
  rename, as the executor writes them. Its admin is on containerIP:<first free port from 61001> (61003 usually);
- Garden's port mapping: a host port on the cell IP forwarded at L4 to each proxy port (and, with
  `enable_unproxied_port_mappings`, to each app port). One "garden" Envoy per cell does this forwarding (file
  LDS/CDS, like iptables DNAT rules that come and go), so the instance Envoy's config stays exactly Diego's.

Deviations, all forced by sharing one network namespace: listeners bind the container IP instead of 0.0.0.0,
admin listens on the container IP instead of 127.0.0.1, Envoy runs with `--disable-hot-restart` (instead of a
distinct `--base-id` per process), and every instance certificate shares one RSA key (`certs.shared_key`:
issuing thousands of instances must not wait for RSA key generation). Certificates are valid 24 h and are not
renewed. `CellInstance.net_info()` gives what Diego's rep would put in the ActualLRP (v58 shape: host_port 0).

    pki = CellPKI.generate(tmp / "pki")
    with Cell(tmp / "cell", pki) as cell:
        instance = cell.start_instance("guid-1")
        bbs.start_instance("process-guid", 0, **instance.net_info())

`python -m devtools.cell --dir D --instances 2` runs a cell for a demo and prints how to reach it with curl.
"""

from __future__ import annotations

import datetime
import fcntl
import http.client
import ipaddress
import itertools
import json
import os
import random
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import yaml
from cryptography import x509

from devtools import peers
from devtools.apps import AppInstance, EnvoyApp, H2cApp, TcpEchoApp
from devtools.certs import CA, CertPair, make_ca, shared_key
from devtools.ports import free_port
from devtools.processes import ManagedProcess
from devtools.waiting import poll

__all__ = [
    "V58_VERIFY_SUBJECT_ALT_NAMES",
    "Cell",
    "CellInstance",
    "CellPKI",
    "PortMapping",
]

V58_VERIFY_SUBJECT_ALT_NAMES = (
    "gorouter.service.cf.internal",
    "ssh-proxy.service.cf.internal",
    "tcp-router.service.cf.internal",
)
CIPHER_SUITES = ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256")
ALPN = "h2,http/1.1"  # one string, as the executor writes it; Envoy splits it on commas
FIRST_PROXY_PORT = 61001
LAST_PROXY_PORT = 65534  # exclusive
C2C_PORT = 61443
C2C_CONTAINER_PORT = 8080
SSH_PORT = 2222
IDENTITY_VALIDITY = datetime.timedelta(hours=24)
ID_CERT_SECRET = "id-cert-and-key"
C2C_CERT_SECRET = "c2c-cert-and-key"
VALIDATION_SECRET = "id-validation-context"
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
_MAX_UINT32 = 2**32 - 1
CONTAINER_NETWORK = ipaddress.ip_network("127.1.0.0/16")
_IP_LOCK_DIR = Path(tempfile.gettempdir()) / "devtools-cell-ips"

AppKind = Literal["http", "h2c", "tcp-echo", "envoy-http"]


class _App(Protocol):
    def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# PKI


@dataclass
class CellPKI:
    """The certificates a cell trusts and uses.

    `identity_ca` signs instance certificates (cf-deployment: `diego_instance_identity_ca`, intermediate CN
    `instanceIdentityCA`); `root_ca_cert` is its root (`application_ca`, CN `appRootCA`), what routers trust
    (`router.ca_certs`); `trusted_ca_certificates` are the CAs whose client certificates the proxies accept
    (rep's `containers.proxy.trusted_ca_certificates`; v58: `service_cf_internal_ca` three times). `generate`
    also gives the client CA and router / tcp-router client certificates; from existing files they are None.
    """

    identity_ca: CA
    root_ca_cert: Path
    trusted_ca_certificates: tuple[Path, ...]
    client_ca: CA | None = None
    router_client: CertPair | None = None
    tcp_router_client: CertPair | None = None

    @classmethod
    def from_files(
        cls,
        *,
        identity_ca_cert: Path,
        identity_ca_key: Path,
        root_ca_cert: Path,
        trusted_ca_certificates: Iterable[Path],
    ) -> CellPKI:
        """From PEM files another tool wrote (e.g. `bosh int --vars-store`'s application_ca,
        diego_instance_identity_ca and service_cf_internal_ca)."""
        trusted = tuple(Path(p) for p in trusted_ca_certificates)
        if not trusted:
            raise ValueError("trusted_ca_certificates is empty: no client certificate could be verified")
        return cls(CA(Path(identity_ca_cert), Path(identity_ca_key)), Path(root_ca_cert), trusted)

    @classmethod
    def generate(cls, directory: Path) -> CellPKI:
        """A standalone PKI shaped like v58's: appRootCA > instanceIdentityCA, and internalCA with the
        router's client certificate (SAN gorouter.service.cf.internal, EKU clientAuth) and tcp-router's."""
        root = make_ca(directory, "appRootCA")
        identity = make_ca(directory, "instanceIdentityCA", issuer=root)
        internal = make_ca(directory, "internalCA")
        router = internal.issue("gorouter", directory, dns_names=["gorouter.service.cf.internal"], server=False)
        tcp_router = internal.issue("tcp-router", directory, dns_names=["tcp-router.service.cf.internal"], server=False)
        return cls(identity, root.cert_path, (internal.cert_path,), internal, router, tcp_router)

    def trusted_ca_bundle(self) -> str:
        """The PEM concatenation the rep puts in `id-validation-context`."""
        parts = [p.read_text().strip() + "\n" for p in self.trusted_ca_certificates]
        return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Instances


@dataclass(frozen=True)
class PortMapping:
    """One entry of ActualLRPNetInfo.ports, as the rep reports it."""

    container_port: int
    host_port: int = 0
    container_tls_proxy_port: int = 0
    host_tls_proxy_port: int = 0


@dataclass
class CellInstance:
    """An app instance on a cell: its container IP, the ports Garden mapped and the Envoy in front of it."""

    instance_guid: str
    cell_ip: str
    container_ip: str
    ports: tuple[int, ...]  # container ports, DesiredLRP order
    port_mappings: tuple[PortMapping, ...]  # NetInfo order, including 8080's C2C entry (61443, no host port)
    admin_port: int
    config_dir: Path
    envoy: ManagedProcess
    started_in_seconds: float = 0.0
    _cell: Cell | None = field(default=None, repr=False)
    _app: _App | None = field(default=None, repr=False)
    _ip_lock: IO[bytes] | None = field(default=None, repr=False)

    @property
    def container_port(self) -> int:
        return self.ports[0]

    @property
    def host_tls_proxy_port(self) -> int:
        """The cell-IP port Garden forwards to the first container port's TLS proxy (the route's tls_port)."""
        return self.mapping(self.container_port).host_tls_proxy_port

    @property
    def container_tls_proxy_port(self) -> int:
        return self.mapping(self.container_port).container_tls_proxy_port

    @property
    def host_port(self) -> int:
        """The unproxied host port of the first container port; 0 unless enable_unproxied_port_mappings."""
        return self.mapping(self.container_port).host_port

    def mapping(self, container_port: int) -> PortMapping:
        """The proxied mapping of `container_port` (not the C2C one)."""
        for m in self.port_mappings:
            if m.container_port == container_port and m.container_tls_proxy_port != C2C_PORT:
                return m
        raise KeyError(f"instance {self.instance_guid} has no container port {container_port}")

    def net_info(self) -> dict[str, Any]:
        """Keyword arguments for `BBSDouble.start_instance`: the ActualLRPNetInfo the rep would report (v58:
        preferred address HOST, host_port 0, the TLS proxy port on 61001 and its Garden port), plus the
        instance guid the certificate names. The double's `extra_ports` carry (container, host) only, so
        further ports lose their TLS proxy ports and 8080's C2C entry is left out; `port_mappings` has all."""
        first = self.mapping(self.container_port)
        extra = [self.mapping(p) for p in self.ports[1:]]
        return {
            "instance_guid": self.instance_guid,
            "address": self.cell_ip,
            "instance_address": self.container_ip,
            "preferred_address": "HOST",
            "container_port": first.container_port,
            "host_port": first.host_port,
            "container_tls_proxy_port": first.container_tls_proxy_port,
            "host_tls_proxy_port": first.host_tls_proxy_port,
            "extra_ports": [(m.container_port, m.host_port) for m in extra],
        }

    def envoy_rss_bytes(self, *, anonymous_only: bool = False) -> int:
        """Resident memory of this instance's Envoy (0 if it is not running). Most of VmRSS is the Envoy binary,
        shared by every instance; `anonymous_only` gives RssAnon, closer to what one more instance costs."""
        if not self.envoy.running or self.envoy.proc is None:
            return 0
        field_name = "RssAnon:" if anonymous_only else "VmRSS:"
        try:
            for line in Path(f"/proc/{self.envoy.proc.pid}/status").read_text().splitlines():
                if line.startswith(field_name):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self, *, graceful: bool = False) -> None:
        """Stop the Envoy, the app and Garden's mappings. `graceful` first does what the executor does:
        rewrites the certificates with an empty guid and waits (polling admin, at most the executor's 5 s
        `configuration_reload_duration`) until Envoy serves them."""
        cell = self._cell
        if cell is not None:
            cell._forget(self)
            if graceful and self.envoy.running:
                serial = cell._write_certificates(self, "", ())
                _poll(lambda: _admin_has_serial(self.container_ip, self.admin_port, serial), 5.0)
        self.envoy.stop()
        if self._app is not None:
            self._app.stop()
            self._app = None
        if cell is not None:
            cell._garden_remove(self)
            self._cell = None
        if self._ip_lock is not None:
            self._ip_lock.close()
            self._ip_lock = None


# ---------------------------------------------------------------------------------------------------------------
# The cell


class Cell:
    """A Diego cell double on this machine. Defaults are cf-deployment v58's rep properties
    (`containers.proxy.*`). Start instances with `start_instance`; `stop` (or leaving the `with`) stops all."""

    def __init__(
        self,
        workdir: Path,
        pki: CellPKI,
        *,
        cell_ip: str = "127.0.0.1",
        require_and_verify_client_certificates: bool = True,
        verify_subject_alt_names: Sequence[str] = V58_VERIFY_SUBJECT_ALT_NAMES,
        enable_unproxied_port_mappings: bool = False,
        enable_http2: bool = True,
        drain_time_s: int = 1,
        envoy_log_level: str = "critical",
        start_timeout: float = 30.0,
    ) -> None:
        """`drain_time_s` is Envoy's `--drain-time-s` (the executor passes the LRP's; 1 keeps stops quick);
        `envoy_log_level` is the executor's "critical" (raise it to debug a proxy)."""
        self.workdir = Path(workdir)
        self.pki = pki
        self.cell_ip = cell_ip
        self.require_and_verify_client_certificates = require_and_verify_client_certificates
        self.verify_subject_alt_names = tuple(verify_subject_alt_names)
        self.enable_unproxied_port_mappings = enable_unproxied_port_mappings
        self.enable_http2 = enable_http2
        self.drain_time_s = drain_time_s
        self.envoy_log_level = envoy_log_level
        self.start_timeout = start_timeout
        self.instances: dict[str, CellInstance] = {}
        self._lock = threading.Lock()
        self._garden: _Garden | None = None
        self._ip_cursor = random.randrange(CONTAINER_NETWORK.num_addresses)
        self._chain_tail = pki.identity_ca.cert_pem.strip() + b"\n"

    def __enter__(self) -> Cell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every instance (several at a time) and the Garden forwarder."""
        with self._lock:
            garden, self._garden = self._garden, None  # the whole cell goes: no need to unmap one by one
            instances = list(self.instances.values())
        with ThreadPoolExecutor(max_workers=16) as pool:
            for _ in pool.map(lambda instance: instance.stop(), instances):
                pass
        if garden is not None:
            garden.stop()

    def start_instance(
        self,
        instance_guid: str,
        *,
        app: AppKind = "http",
        ports: Sequence[int] = (8080,),
        internal_hostnames: Sequence[str] = (),
        organizational_units: Sequence[str] = (),
        static_dir: Path | None = None,
    ) -> CellInstance:
        """Start an app instance behind its Envoy and return once both, and Garden's mappings, accept
        connections. `ports` are the DesiredLRP's container ports in order (CC sends the app ports then 2222,
        which gets a proxy but no app here); `internal_hostnames` go into the C2C certificate;
        `organizational_units` are the certificate's OUs (CC: organization:<g>, space:<g>, app:<g>);
        `static_dir`: an "http" app serves its index.html instead of its guid."""
        began = time.monotonic()
        ports = tuple(dict.fromkeys(ports))
        if not ports:
            raise ValueError("an instance needs at least one container port")
        if C2C_PORT in ports:
            raise ValueError(f"container port {C2C_PORT} is reserved for container networking")
        with self._lock:
            if instance_guid in self.instances:
                raise ValueError(f"instance {instance_guid} already runs on this cell")
        proxy_ports = _proxy_ports(ports)
        admin_port = _next_free_port(set(ports) | set(proxy_ports.values()) | {C2C_PORT})
        listen_ports = [*ports, *proxy_ports.values(), admin_port] + ([C2C_PORT] if C2C_CONTAINER_PORT in ports else [])
        container_ip, ip_lock = self._allocate_ip(listen_ports)

        mappings: list[PortMapping] = []
        for port in ports:
            unproxied = free_port(self.cell_ip) if self.enable_unproxied_port_mappings else 0
            mappings.append(PortMapping(port, unproxied, proxy_ports[port], free_port(self.cell_ip)))
            if port == C2C_CONTAINER_PORT:
                mappings.append(PortMapping(port, 0, C2C_PORT, 0))

        config_dir = self.workdir / instance_guid
        config_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(peers.envoy()),
            "-c",
            str(config_dir / "envoy.yaml"),
            "--drain-time-s",
            str(self.drain_time_s),
            "--log-level",
            self.envoy_log_level,
            "--concurrency",
            "1",
            "--disable-hot-restart",
        ]
        instance = CellInstance(
            instance_guid=instance_guid,
            cell_ip=self.cell_ip,
            container_ip=container_ip,
            ports=ports,
            port_mappings=tuple(mappings),
            admin_port=admin_port,
            config_dir=config_dir,
            envoy=ManagedProcess(f"envoy-{instance_guid}", argv, config_dir / "envoy.log"),
            _cell=self,
            _ip_lock=ip_lock,
        )
        with self._lock:
            self.instances[instance_guid] = instance
        try:
            app_ports = [p for p in ports if p != SSH_PORT]
            instance._app = _start_app(app, instance_guid, container_ip, app_ports, config_dir, static_dir)
            self._write_certificates(instance, instance_guid, internal_hostnames, organizational_units)
            self._write_validation_context(instance)
            _write_atomic(config_dir / "envoy.yaml", yaml.safe_dump(self.bootstrap(instance), sort_keys=False))
            instance.envoy.start()
            self._garden_add(instance)
            self._wait_ready(instance)
        except BaseException:
            instance.stop()
            raise
        instance.started_in_seconds = time.monotonic() - began
        return instance

    # -- the executor's Envoy config ----------------------------------------------------------------------------

    def bootstrap(self, instance: CellInstance) -> dict[str, Any]:
        """The Envoy bootstrap the executor writes for `instance` (envoy.yaml)."""
        cip = instance.container_ip
        clusters: list[dict[str, Any]] = []
        listeners: list[dict[str, Any]] = []
        for port in instance.ports:
            cluster = f"service-cluster-{port}"
            clusters.append(
                {
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "0.250s",
                    "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [_endpoint(cip, port)]}]},
                    "circuit_breakers": {
                        "thresholds": [
                            {"max_connections": _MAX_UINT32, "max_pending_requests": _MAX_UINT32, "max_requests": _MAX_UINT32}
                        ]
                    },
                }
            )
        for m in instance.port_mappings:
            listeners.append(self._listener(instance, m.container_port, m.container_tls_proxy_port))
        return {
            "node": {"id": f"sidecar~{cip}~{instance.instance_guid}~x", "cluster": "proxy-cluster"},
            "admin": {"access_log_path": "/dev/null", "address": _address(cip, instance.admin_port)},
            "stats_config": {"stats_matcher": {"reject_all": True}},
            "layered_runtime": {
                "layers": [{"name": "static-layer", "static_layer": {"envoy.reloadable_features.new_tcp_connection_pool": False}}]
            },
            "static_resources": {"clusters": clusters, "listeners": listeners},
        }

    def _listener(self, instance: CellInstance, container_port: int, proxy_port: int) -> dict[str, Any]:
        c2c = proxy_port == C2C_PORT
        common: dict[str, Any] = {
            "tls_params": {"cipher_suites": list(CIPHER_SUITES)},
            "tls_certificate_sds_secret_configs": [_sds_config(C2C_CERT_SECRET if c2c else ID_CERT_SECRET, instance.config_dir)],
        }
        if self.enable_http2 and not c2c:
            common["alpn_protocols"] = [ALPN]
        tls: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": common,
        }
        if self.require_and_verify_client_certificates and not c2c:
            tls["require_client_certificate"] = True
            common["validation_context_sds_secret_config"] = _sds_config(VALIDATION_SECRET, instance.config_dir)
        name = f"listener-{container_port}-{proxy_port}"
        tcp_proxy = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": f"stats-{container_port}-{proxy_port}",
            "cluster": f"service-cluster-{container_port}",
        }
        return {
            "name": name,
            "address": _address(instance.container_ip, proxy_port),  # Diego: 0.0.0.0 inside the container
            "filter_chains": [
                {
                    "filters": [{"name": "envoy.tcp_proxy", "typed_config": tcp_proxy}],
                    "transport_socket": {"name": name, "typed_config": tls},
                }
            ],
        }

    def _write_certificates(
        self,
        instance: CellInstance,
        guid: str,
        internal_hostnames: Sequence[str],
        organizational_units: Sequence[str] = (),
    ) -> int:
        """Issue and write (by rename) the instance identity and C2C certificates; return the identity
        certificate's serial number."""
        ca = self.pki.identity_ca
        key = shared_key()
        id_cert, id_key = ca.issue_pem(
            guid,
            dns_names=[guid],
            ip_addresses=[instance.container_ip],
            key=key,
            organizational_units=organizational_units,
            valid_for=IDENTITY_VALIDITY,
        )
        c2c_cert, c2c_key = ca.issue_pem(
            guid,
            dns_names=list(dict.fromkeys([guid, *internal_hostnames])),
            key=key,
            organizational_units=organizational_units,
            valid_for=IDENTITY_VALIDITY,
        )
        for secret, cert, cert_key in ((ID_CERT_SECRET, id_cert, id_key), (C2C_CERT_SECRET, c2c_cert, c2c_key)):
            chain = (cert + self._chain_tail).decode()
            pair = {"certificate_chain": {"inline_string": chain}, "private_key": {"inline_string": cert_key.decode()}}
            body = {"tls_certificate": pair}
            _write_atomic(instance.config_dir / f"sds-{secret}.yaml", _secret_file(secret, body))
        return x509.load_pem_x509_certificate(id_cert).serial_number

    def _write_validation_context(self, instance: CellInstance) -> None:
        body = {
            "validation_context": {
                "trusted_ca": {"inline_string": self.pki.trusted_ca_bundle()},
                "match_subject_alt_names": [{"exact": san} for san in self.verify_subject_alt_names],
            }
        }
        _write_atomic(instance.config_dir / f"sds-{VALIDATION_SECRET}.yaml", _secret_file(VALIDATION_SECRET, body))

    # -- container IPs, Garden, readiness -----------------------------------------------------------------------

    def _allocate_ip(self, ports: Sequence[int]) -> tuple[str, IO[bytes]]:
        """A container IP no other cell (in any process) holds and whose ports are free; the returned open
        lock file keeps it ours until closed."""
        _IP_LOCK_DIR.mkdir(parents=True, exist_ok=True)
        size = CONTAINER_NETWORK.num_addresses
        with self._lock:
            for _ in range(size):
                self._ip_cursor = (self._ip_cursor + 1) % size
                ip = CONTAINER_NETWORK[self._ip_cursor]
                if ip in (CONTAINER_NETWORK.network_address, CONTAINER_NETWORK.broadcast_address):
                    continue
                lock = (_IP_LOCK_DIR / str(ip)).open("ab")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    lock.close()
                    continue
                if all(_bindable(str(ip), p) for p in ports):
                    return str(ip), lock
                lock.close()
        raise RuntimeError(f"no free container IP left in {CONTAINER_NETWORK}")

    def _garden_add(self, instance: CellInstance) -> None:
        forwards: list[tuple[int, str, int]] = []
        for m in instance.port_mappings:
            if m.host_tls_proxy_port:
                forwards.append((m.host_tls_proxy_port, instance.container_ip, m.container_tls_proxy_port))
            if m.host_port:
                forwards.append((m.host_port, instance.container_ip, m.container_port))
        with self._lock:
            if self._garden is None:
                self._garden = _Garden(self.workdir / "_garden", self.cell_ip)
            garden = self._garden
        garden.add(instance.instance_guid, forwards, self.start_timeout)

    def _garden_remove(self, instance: CellInstance) -> None:
        with self._lock:
            garden = self._garden
        if garden is not None:
            garden.remove(instance.instance_guid)

    def _forget(self, instance: CellInstance) -> None:
        with self._lock:
            if self.instances.get(instance.instance_guid) is instance:
                del self.instances[instance.instance_guid]

    def _wait_ready(self, instance: CellInstance) -> None:
        cip = instance.container_ip
        listening = [m.container_tls_proxy_port for m in instance.port_mappings]

        def ready() -> bool:
            if not instance.envoy.running:
                raise RuntimeError(f"Envoy of {instance.instance_guid} exited:\n{_explain(instance)}")
            return _admin_get(cip, instance.admin_port, "/ready")[0] == 200 and all(_connects(cip, p) for p in listening)

        if not _poll(ready, self.start_timeout):
            raise RuntimeError(f"Envoy of {instance.instance_guid} not ready in {self.start_timeout}s:\n{_explain(instance)}")


def _proxy_ports(ports: Sequence[int]) -> dict[int, int]:
    """The executor's allocation: one proxy port per container port, in order, from 61001, skipping 61443 and
    the app's own ports."""
    taken = set(ports) | {C2C_PORT}
    candidates = (p for p in range(FIRST_PROXY_PORT, LAST_PROXY_PORT) if p not in taken)
    allocated: dict[int, int] = {}
    for port in ports:
        try:
            allocated[port] = next(candidates)
        except StopIteration:
            raise ValueError("no proxy port left") from None
    return allocated


def _next_free_port(taken: set[int]) -> int:
    return next(p for p in itertools.count(FIRST_PROXY_PORT) if p not in taken)


def _start_app(kind: AppKind, guid: str, ip: str, ports: Sequence[int], config_dir: Path, static_dir: Path | None) -> _App:
    apps: list[_App] = []
    try:
        for port in ports:
            if kind == "http":
                apps.append(AppInstance(guid, host=ip, port=port, static_dir=static_dir))
            elif kind == "h2c":
                apps.append(H2cApp(guid, config_dir / f"h2c-{port}", host=ip, port=port))
            elif kind == "tcp-echo":
                apps.append(TcpEchoApp(guid, host=ip, port=port))
            elif kind == "envoy-http":
                apps.append(EnvoyApp(guid, config_dir / f"envoy-app-{port}", host=ip, port=port))
            else:
                raise ValueError(f"unknown app kind {kind!r} (http, h2c, tcp-echo, envoy-http)")
    except BaseException:
        for started in apps:
            started.stop()
        raise
    return _Apps(apps)


@dataclass
class _Apps:
    apps: list[_App]

    def stop(self) -> None:
        for app in self.apps:
            app.stop()


class _Garden:
    """Garden's port mappings on a cell: one Envoy forwarding cell-IP host ports at L4 to container ports,
    its listeners and clusters from files rewritten by rename (file LDS/CDS)."""

    def __init__(self, workdir: Path, cell_ip: str) -> None:
        self.workdir = workdir
        self.cell_ip = cell_ip
        self.forwards: dict[str, list[tuple[int, str, int]]] = {}
        self._lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        self.lds, self.cds = workdir / "lds.yaml", workdir / "cds.yaml"
        self._write()
        self.admin_port = free_port()
        config = {
            "node": {"id": f"garden~{cell_ip}", "cluster": "garden"},
            "admin": {"address": _address("127.0.0.1", self.admin_port)},
            "dynamic_resources": {
                "lds_config": {"path_config_source": {"path": str(self.lds)}, "resource_api_version": "V3"},
                "cds_config": {"path_config_source": {"path": str(self.cds)}, "resource_api_version": "V3"},
            },
        }
        bootstrap = workdir / "envoy.yaml"
        bootstrap.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [str(peers.envoy()), "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warning"]
        argv += ["--drain-time-s", "0"]
        self.process = ManagedProcess(f"garden-{cell_ip}", argv, workdir / "envoy.log").start()
        if not _poll(lambda: self._alive() and _admin_get("127.0.0.1", self.admin_port, "/ready")[0] == 200, 30):
            self.process.stop()
            raise RuntimeError(f"garden Envoy did not start:\n{self.process.log_tail()}")

    def _alive(self) -> bool:
        if not self.process.running:
            raise RuntimeError(f"garden Envoy exited:\n{self.process.log_tail()}")
        return True

    def add(self, owner: str, forwards: list[tuple[int, str, int]], timeout: float) -> None:
        with self._lock:
            self.forwards[owner] = forwards
            self._write(clusters_only=True)
            names = [self._name(f[0]) for f in forwards]
            if not _poll(lambda: self._alive() and all(f"{n}::" in self._clusters() for n in names), timeout):
                raise RuntimeError(f"garden did not take clusters {names}:\n{self.process.log_tail()}")
            self._write()
            if not _poll(lambda: self._alive() and all(_connects(self.cell_ip, f[0]) for f in forwards), timeout):
                raise RuntimeError(f"garden did not open ports {[f[0] for f in forwards]}:\n{self.process.log_tail()}")

    def remove(self, owner: str) -> None:
        with self._lock:
            if self.forwards.pop(owner, None) is not None and self.process.running:
                self._write()

    def stop(self) -> None:
        self.process.stop()

    def _clusters(self) -> str:
        return _admin_get("127.0.0.1", self.admin_port, "/clusters")[1]

    def _name(self, host_port: int) -> str:
        return f"garden-{self.cell_ip}-{host_port}"

    def _write(self, *, clusters_only: bool = False) -> None:
        """Clusters are written with every forward; listeners (unless `clusters_only`) only for those whose
        cluster is in place. Removing a forward drops its listener and cluster together (no traffic meanwhile)."""
        all_forwards = [f for fs in self.forwards.values() for f in fs]
        clusters = [
            {
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": self._name(host),
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": self._name(host), "endpoints": [{"lb_endpoints": [_endpoint(ip, port)]}]},
                # Garden's port mappings are kernel NAT rules: no limit on connections (Envoy's default
                # of 1,024 per cluster refused a router's connections to an instance with 1,000 routes).
                "circuit_breakers": {"thresholds": [{"max_connections": _MAX_UINT32}]},
            }
            for host, ip, port in all_forwards
        ]
        _write_atomic(self.cds, yaml.safe_dump({"version_info": str(time.monotonic_ns()), "resources": clusters}))
        if clusters_only:
            return
        listeners = [
            {
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": self._name(host),
                "address": _address(self.cell_ip, host),
                "enable_reuse_port": False,
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                    "stat_prefix": self._name(host),
                                    "cluster": self._name(host),
                                },
                            }
                        ]
                    }
                ],
            }
            for host, _ip, _port in all_forwards
        ]
        _write_atomic(self.lds, yaml.safe_dump({"version_info": str(time.monotonic_ns()), "resources": listeners}))


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _endpoint(ip: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": _address(ip, port)}}


def _sds_config(name: str, config_dir: Path) -> dict[str, Any]:
    """A secret from a file (the executor's `ConfigSource.path`, deprecated in newer Envoys but accepted)."""
    return {"name": name, "sds_config": {"path": str(config_dir / f"sds-{name}.yaml"), "resource_api_version": "V3"}}


def _secret_file(name: str, body: dict[str, Any]) -> str:
    """A DiscoveryResponse with one Secret, as the executor writes each SDS file."""
    return yaml.safe_dump({"version_info": "0", "resources": [{"@type": _SECRET_TYPE, "name": name, **body}]}, sort_keys=False)


def _write_atomic(path: Path, text: str) -> None:
    """Write to `<path>.tmp` and rename over `path`: Envoy reloads a watched file when it is moved into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _connects(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ip, port)) == 0


def _admin_get(ip: str, port: int, path: str) -> tuple[int, str]:
    """GET on an Envoy admin (no proxies); (0, "") if it does not answer."""
    connection = http.client.HTTPConnection(ip, port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        connection.close()


def _admin_has_serial(ip: str, port: int, serial: int) -> bool:
    """Whether Envoy's admin /certs lists a certificate with this serial number."""
    try:
        certs = json.loads(_admin_get(ip, port, "/certs")[1] or "{}").get("certificates", [])
    except ValueError:
        return False
    serials = {int(c.get("serial_number", "0") or "0", 16) for entry in certs for c in entry.get("cert_chain", [])}
    return serial in serials


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """devtools.waiting.poll, letting every error of the predicate through (a dead Envoy is not "not yet")."""
    return poll(predicate, timeout, ignoring=())


def _explain(instance: CellInstance) -> str:
    """Why an instance's Envoy is not serving: its log, and what `envoy --mode validate` says of its config."""
    argv = [str(peers.envoy()), "--mode", "validate", "-c", str(instance.config_dir / "envoy.yaml"), "--disable-hot-restart"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        validation = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
    except (OSError, subprocess.TimeoutExpired) as exc:
        validation = str(exc)
    return f"{instance.envoy.log_tail()}\nenvoy --mode validate:\n{validation}"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m devtools.cell", description="Run a Diego cell double for a demo.")
    parser.add_argument("--dir", type=Path, required=True, help="working directory (PKI, Envoy configs, logs)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--app", choices=["http", "h2c", "tcp-echo", "envoy-http"], default="http")
    args = parser.parse_args(argv)
    pki = CellPKI.generate(args.dir / "pki")
    assert pki.router_client is not None
    with Cell(args.dir / "cell", pki) as cell:
        for i in range(args.instances):
            instance = cell.start_instance(f"demo-instance-{i}", app=args.app)
            port = instance.host_tls_proxy_port
            print(f"{instance.instance_guid}: container {instance.container_ip}, host port {cell.cell_ip}:{port}")
            # --http1.1: curl offers h2 by default, Envoy would pick it and hand an HTTP/1.1 app raw HTTP/2
            # (as on Diego; gorouter offers h2 only for http2 routes).
            print(
                f"  curl --http1.1 --cacert {pki.root_ca_cert}"
                f" --cert {pki.router_client.cert_path} --key {pki.router_client.key_path}"
                f" --resolve {instance.instance_guid}:{port}:{cell.cell_ip} https://{instance.instance_guid}:{port}/"
            )
        print("Ctrl-C stops the cell.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
