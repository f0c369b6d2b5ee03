"""The whole routing tier on one machine for tests and benchmarks: a BBS test double standing in for
Diego, Copilot (its real `copilot` command), a real istiod and a real Envoy router with router_sds
serving its TLS certificates beside it (as the istio-router job runs them), all on loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from bbs_double.server import BBSDouble
from devtools.certs import make_ca
from devtools.envoy import Envoy, start_envoy
from devtools.istiod import Istiod, start_istiod, wait_ready
from devtools.ports import free_port, wait_for_port
from devtools.processes import ManagedProcess


@dataclass
class Tier:
    workdir: Path
    bbs: BBSDouble
    copilot: ManagedProcess
    istiod: Istiod
    envoy: Envoy
    http_port: int
    mcp_port: int
    health_port: int
    extra: dict = field(default_factory=dict)
    https_port: int = 0
    router_sds: ManagedProcess | None = None
    router_ca: Path | None = None  # the CA that signed the router's certificates

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, host: str, path: str = "/", timeout: float = 5.0) -> requests.Response:
        """A request through the router (a fresh connection each time, as separate clients would)."""
        return requests.get(self.router_url + path, headers={"Host": host}, timeout=timeout)

    def tls_connect(
        self, server_name: str | None, *, alpn: list[str] | None = None, version: ssl.TLSVersion | None = None
    ) -> ssl.SSLSocket:
        """A TLS connection to the router's HTTPS port sending `server_name` as SNI (None: no SNI); the
        certificate chain is verified against the router CA but not the name, so tests can look at it."""
        context = ssl.create_default_context(cafile=str(self.router_ca))
        context.check_hostname = False
        if version is not None:
            with warnings.catch_warnings():  # old versions are deprecated: tests ask for them to see them refused
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = version
            if version < ssl.TLSVersion.TLSv1_2:
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
        if alpn:
            context.set_alpn_protocols(alpn)
        sock = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
        try:
            return context.wrap_socket(sock, server_hostname=server_name)
        except BaseException:
            sock.close()
            raise

    def restart_copilot(self) -> None:
        self.copilot.stop()
        self.copilot.start()
        if not wait_for_port(self.mcp_port, timeout=30):
            raise RuntimeError(f"copilot did not come back:\n{self.copilot.log_tail()}")

    def cc_stub(self):
        """A Cloud Controller client (our own stubs of api.CloudControllerCopilot) with CC's certificate."""
        import grpc

        from copilot.protos import cc_copilot_pb2_grpc

        client = self.extra["cc_client"]
        credentials = grpc.ssl_channel_credentials(
            self.extra["cc_ca"].read_bytes(), client.key_path.read_bytes(), client.cert_path.read_bytes()
        )
        channel = grpc.secure_channel(f"127.0.0.1:{self.extra['cc_port']}", credentials)
        return cc_copilot_pb2_grpc.CloudControllerCopilotStub(channel)

    def register(self, registrations: list[dict], *, delete: bool = False) -> requests.Response:
        """Calls Copilot's registrar API as our route_registrar job does (mutual TLS)."""
        client = self.extra["registrar_client"]
        return requests.request(
            "DELETE" if delete else "POST",
            self.extra["registrar_url"] + "/v1/registrations",
            json={"registrations": registrations},
            cert=(str(client.cert_path), str(client.key_path)),
            verify=str(self.extra["registrar_ca"]),
            timeout=5,
        )

    def copilot_health(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.health_port}/health", timeout=5).json()

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5).text

    def stop(self) -> None:
        stoppers = [self.envoy.process.stop, self.istiod.process.stop, self.copilot.stop, self.bbs.stop]
        if self.router_sds is not None:
            stoppers.insert(1, self.router_sds.stop)
        for stopper in stoppers:
            with contextlib.suppress(Exception):  # best-effort teardown
                stopper()


# The router's certificates (name, SNI names): the first also answers clients sending no or another SNI.
ROUTER_CERTIFICATES = (("wildcard-example-com", ("*.example.com",)), ("app-example-com", ("app.example.com",)))
# Where the router job keeps them, as router_sds's file_cert_dir: only a name, nothing is read there.
ROUTER_CERT_DIR = "/var/vcap/jobs/istio-router/config/certs"


def start_router_sds(
    workdir: Path, certificates: list[tuple[str, Path, Path]], trusted_ca_files: tuple[Path, ...] = ()
) -> tuple[ManagedProcess, str]:
    """router_sds (python -m router_sds) serving (name, cert file, key file); returns it and where it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    socket_path = workdir / "sds.sock"
    listen = f"unix://{socket_path}" if len(str(socket_path)) < 100 else f"127.0.0.1:{free_port()}"
    config = {
        "listen": listen,
        "file_cert_dir": ROUTER_CERT_DIR,
        "poll_interval_seconds": 1,
        "trusted_ca_files": [str(path) for path in trusted_ca_files],
        "certificates": [
            {"name": name, "certificate_chain_file": str(cert), "private_key_file": str(key)} for name, cert, key in certificates
        ],
    }
    config_path = workdir / "sds.yml"
    config_path.write_text(yaml.safe_dump(config))
    process = ManagedProcess(
        "router-sds",
        [sys.executable, "-m", "router_sds", "--config", str(config_path)],
        workdir / "sds.log",
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    ).start()
    def listening() -> bool:
        if listen.startswith("unix:"):
            return socket_path.exists()
        return wait_for_port(int(listen.rpartition(":")[2]), timeout=0.2)

    deadline = time.monotonic() + 30
    while not listening():
        if time.monotonic() > deadline or not process.running:
            process.stop()
            raise RuntimeError(f"router-sds did not start:\n{process.log_tail()}")
        time.sleep(0.05)
    return process, listen


def start_tier(
    workdir: Path,
    *,
    reconcile_interval: float = 30.0,
    debounce_after: str = "10ms",
    preload: Callable[[BBSDouble], None] | None = None,
    router_certificates: tuple[tuple[str, tuple[str, ...]], ...] = ROUTER_CERTIFICATES,
) -> Tier:
    """Starts everything on loopback; `preload` fills the BBS double before Copilot first lists it."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    router_ca = make_ca(pki, "router-ca")
    # The CA of platform components reached over TLS (registrations with a tls_port).
    upstream_ca = make_ca(pki, "platform-ca")
    # Diego's instance identity CA: signs each instance's certificate (SAN = instance guid), for route integrity.
    identity_ca = make_ca(pki, "instance-identity-ca")
    router_certs = [
        (name, router_ca.issue(name, pki / "router", dns_names=list(hosts), client=False)) for name, hosts in router_certificates
    ]
    diego_ca = make_ca(pki, "diego-ca")
    bbs_server = diego_ca.issue("bbs-server", pki, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False)
    bbs_client = diego_ca.issue("bbs-client", pki, server=False)
    cc_ca = make_ca(pki, "cc-ca")
    cc_server = cc_ca.issue("copilot-cc-server", pki, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False)
    cc_client = cc_ca.issue("cloud-controller", pki, server=False)
    registrar_ca = make_ca(pki, "registrar-ca")
    registrar_server = registrar_ca.issue(
        "copilot-registrar", pki, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False
    )
    registrar_client = registrar_ca.issue("route-registrar", pki, server=False)
    bbs = BBSDouble(ca_cert=diego_ca.cert_path, server_cert=bbs_server.cert_path, server_key=bbs_server.key_path)
    bbs.start()
    if preload is not None:
        preload(bbs)

    mcp_port, health_port, http_port, https_port, cc_port, registrar_port = (free_port() for _ in range(6))
    config = {
        "bbs": {
            "url": bbs.url,
            "ca_cert": str(diego_ca.cert_path),
            "client_cert": str(bbs_client.cert_path),
            "client_key": str(bbs_client.key_path),
            "reconcile_interval_seconds": reconcile_interval,
            "max_backoff_seconds": 1,
        },
        "mcp": {"listen": f"127.0.0.1:{mcp_port}"},
        "health": {"listen": f"127.0.0.1:{health_port}"},
        "gateway": {
            "http_port": http_port,
            "bind": "127.0.0.1",
            "https_port": https_port,
            "certificates": [{"name": name, "hosts": list(hosts)} for name, hosts in router_certificates],
            "certificate_dir": ROUTER_CERT_DIR,
            "instance_routing": True,
            "upstream_ca_file": str(upstream_ca.cert_path),
            "instance_identity_ca_file": str(identity_ca.cert_path),
        },
        "cc": {
            "listen": f"127.0.0.1:{cc_port}",
            "cert": str(cc_server.cert_path),
            "key": str(cc_server.key_path),
            "client_ca": str(cc_ca.cert_path),
            "bulk_sync_hold_seconds": 0,
        },
        "registrar": {
            "listen": f"127.0.0.1:{registrar_port}",
            "cert": str(registrar_server.cert_path),
            "key": str(registrar_server.key_path),
            "client_ca": str(registrar_ca.cert_path),
        },
        "log_level": "info",
    }
    config_path = workdir / "copilot.yml"
    config_path.write_text(yaml.safe_dump(config))
    copilot = ManagedProcess(
        "copilot",
        [sys.executable, "-m", "copilot.main", "--config", str(config_path)],
        workdir / "copilot.log",
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    ).start()
    if not wait_for_port(mcp_port, timeout=30):
        raise RuntimeError(f"copilot did not start:\n{copilot.log_tail()}")
    istiod = start_istiod(workdir / "istiod", f"127.0.0.1:{mcp_port}", debounce_after=debounce_after)
    wait_ready(istiod)
    router_sds, sds_listen = start_router_sds(
        workdir / "router-sds",
        [(name, pair.cert_path, pair.key_path) for name, pair in router_certs],
        (upstream_ca.cert_path, identity_ca.cert_path),
    )
    envoy = start_envoy(workdir / "envoy", istiod.grpc_port, sds_listen=sds_listen)
    tier = Tier(workdir, bbs, copilot, istiod, envoy, http_port, mcp_port, health_port)
    tier.https_port, tier.router_sds, tier.router_ca = https_port, router_sds, router_ca.cert_path
    tier.extra.update(
        cc_port=cc_port,
        upstream_ca=upstream_ca,
        identity_ca=identity_ca,
        cc_ca=cc_ca.cert_path,
        cc_client=cc_client,
        registrar_url=f"https://127.0.0.1:{registrar_port}",
        registrar_ca=registrar_ca.cert_path,
        registrar_client=registrar_client,
    )
    for port in (http_port, https_port):
        if not wait_for_port(port, timeout=30):
            tier.stop()
            raise RuntimeError(
                f"the router never opened its listener on {port}:\n{envoy.process.log_tail()}\n{istiod.process.log_tail()}"
            )
    return tier


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, message: str = "condition") -> None:
    """Polls `predicate` until it returns truthy; raises AssertionError with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (requests.RequestException, OSError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}" + (f" (last error: {last_error})" if last_error else "")
    )
