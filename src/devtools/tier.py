"""The whole routing tier on one machine for the end-to-end tests and the benchmarks, started by the one
launcher (`local_tier.launch`) from the release's rendered jobs with their default properties:
`manifests/local.yml` (wired as the ops-files wire cf-deployment v58) plus `manifests/ops/local-test.yml`
(the tests' router certificates) and any per-test ops-files. Two stand-ins, the one place each lives:
the BBS test double, in this process so tests drive it directly, and `devtools.cell`, which puts every
app instance behind a v58 container proxy (TLS only, the router's client certificate required)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bbs_double.server import BBSDouble
from devtools.cell import Cell, CellInstance, CellPKI
from devtools.certs import CA, CertPair
from devtools.peers import REPO
from devtools.ports import free_ports
from devtools.waiting import wait_until  # the tests' one wait, also importable from here
from local_tier import launch, render, supervisor
from local_tier.layout import Layout

TEST_OPS = REPO / "manifests" / "ops" / "local-test.yml"
# The tests' router certificates (manifests/ops/local-test.yml): (name, SNI names); the first also
# answers clients sending no or another SNI.
ROUTER_CERTIFICATES = (("wildcard-example-com", ("*.example.com",)), ("app-example-com", ("app.example.com",)))


@dataclass
class RouterAdmin:
    """The router Envoy's admin API (loopback)."""

    port: int

    def config_dump(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/config_dump", timeout=10).json()

    def listeners(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.port}/listeners", timeout=5).text

    def rejected_updates(self) -> dict[str, int]:
        """Config updates from istiod this Envoy rejected (NACKed), by xDS type: all should be 0."""
        stats = requests.get(f"http://127.0.0.1:{self.port}/stats?filter=update_rejected$", timeout=5).text
        counts = (line.rsplit(":", 1) for line in stats.splitlines() if ":" in line)
        return {name.strip(): int(value) for name, value in counts if int(value)}

    def routes(self, host: str | None = None) -> list[dict]:
        """The routes (`Route`, as JSON) of this router's route configurations, in order: of the virtual
        hosts whose domains hold `host`, or of every virtual host."""
        found = []
        dump = self.config_dump()
        routes = next(c for c in dump["configs"] if c["@type"].endswith(".v3.RoutesConfigDump"))  # not Scoped...
        for config in routes.get("dynamic_route_configs", []):
            for virtual_host in config["route_config"].get("virtual_hosts", []):
                if host is None or host in virtual_host.get("domains", []):
                    found += virtual_host.get("routes", [])
        return found

    def route_actions(self, host: str | None = None) -> list[dict]:
        """The route actions (`RouteAction`, as JSON) of `routes(host)`, in order."""
        return [route["route"] for route in self.routes(host) if "route" in route]

    def route_clusters(self, host: str) -> list[str]:
        """The clusters the routes of `host` name in this router's route configurations (each once, in
        order): the services (one per process and port) Copilot's VirtualService for the host routes to."""
        clusters: dict[str, None] = {}
        for action in self.route_actions(host):
            if "cluster" in action:
                clusters[action["cluster"]] = None
            for weighted in action.get("weighted_clusters", {}).get("clusters", []):
                clusters[weighted["name"]] = None
        return list(clusters)

    def clusters(self) -> str:
        """The admin /clusters page: a line per cluster and endpoint statistic (`name::address::stat::value`)."""
        return requests.get(f"http://127.0.0.1:{self.port}/clusters", timeout=5).text

    def cluster_count(self, timeout: float = 5) -> int:
        """The router's clusters; `timeout` seconds for its admin API (busy while it applies a large push)."""
        stats = requests.get(f"http://127.0.0.1:{self.port}/stats?filter=^cluster_manager.active_clusters$", timeout=timeout)
        return int(stats.text.split(":")[1])


@dataclass
class Tier:
    layout: Layout
    ports: dict[str, int]
    bbs: BBSDouble
    cell: Cell
    extra: dict = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    # More routers (start_tier's `routers`): instance group name -> its admin and health ports.
    routers: dict[str, dict[str, int]] = field(default_factory=dict)

    # ------------------------------------------------------------------ where things are

    @property
    def workdir(self) -> Path:
        return self.layout.root

    @property
    def http_port(self) -> int:
        return self.ports["router_http_port"]

    @property
    def https_port(self) -> int:
        return self.ports["router_https_port"]

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def router_ca(self) -> Path:
        return self.extra["router_ca"].cert_path

    @property
    def envoy(self) -> RouterAdmin:
        return RouterAdmin(self.ports["router_admin_port"])

    def router_admin(self, name: str) -> RouterAdmin:
        """Another router's Envoy admin API (start_tier's `routers`)."""
        return RouterAdmin(self.routers[name]["admin_port"])

    def log_path(self, job: str, process: str | None = None) -> Path:
        return self.layout.logs / job / f"{process or job}.log"

    def pid(self, program: str) -> int:
        """The pid of a supervised program (e.g. istio-router-envoy, copilot, pilot-discovery)."""
        return int(supervisor.ctl(self.layout, "pid", program).stdout.strip())

    # ------------------------------------------------------------------ app instances (Diego's part)

    def start_instance(
        self, process_guid: str, index: int, instance_guid: str, *, app: str = "http", cell: Cell | None = None, **bbs_kwargs
    ) -> CellInstance:
        """Starts an instance on a cell (behind its container proxy) and reports it RUNNING to the BBS
        with the net info the rep would report. Extra keyword arguments go to `BBSDouble.start_instance`."""
        instance = (cell or self.cell).start_instance(instance_guid, app=app)  # type: ignore[arg-type]
        try:
            self.bbs.start_instance(process_guid, index, **{**instance.net_info(), **bbs_kwargs})
        except BaseException:
            instance.stop()
            raise
        return instance

    def new_cell(self, name: str, *, pki: CellPKI | None = None, **options) -> Cell:
        """Another cell of this foundation (e.g. with other `containers.proxy` settings, or trusting
        other CAs with `pki`); stopped with the tier."""
        cell = Cell(self.layout.root / "cells" / name, pki or self.extra["cell_pki"], **options)
        self.cells.append(cell)
        return cell

    # ------------------------------------------------------------------ requests through the router

    def get(self, host: str, path: str = "/", timeout: float = 5.0) -> requests.Response:
        """A request through the router (a fresh connection each time, as separate clients would)."""
        return requests.get(self.router_url + path, headers={"Host": host}, timeout=timeout)

    def wait_for_every_instance(self, host: str, guids: Iterable[str], timeout: float = 30.0) -> None:
        """Waits until requests to `host` (no session, no instance header) have been answered (200) by every
        instance in `guids` (the app answers with its instance guid); fails if any other instance answered."""
        expected, seen = set(guids), set()

        def every() -> bool:
            response = self.get(host)
            if response.status_code == 200:
                seen.add(response.text.strip())
            return seen >= expected

        wait_until(every, timeout=timeout, message=f"requests to {host} to reach {sorted(expected)} (seen {sorted(seen)})")
        assert seen == expected, f"{host} was also answered by {sorted(seen - expected)}"

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

    # ------------------------------------------------------------------ Copilot's other sources

    def cc_stub(self):
        """A Cloud Controller client (our own stubs of api.CloudControllerCopilot) with CC's certificate."""
        return launch.cc_stub(self.layout, self.ports)

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
        """Copilot's /health body (it answers 503 with the same body until ready: see copilot_ready)."""
        return requests.get(f"http://127.0.0.1:{self.ports['copilot_health_port']}/health", timeout=5).json()

    def copilot_ready(self) -> bool:
        """Copilot's readiness: /health is 200 only while it serves istiod."""
        return requests.get(f"http://127.0.0.1:{self.ports['copilot_health_port']}/health", timeout=5).status_code == 200

    def router_health(self) -> int | None:
        """The router's load-balancer check (/health on its static listener): the status, None if refused."""
        try:
            return requests.get(f"http://127.0.0.1:{self.ports['router_health_port']}/health", timeout=5).status_code
        except requests.ConnectionError:
            return None

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.ports['copilot_health_port']}/metrics", timeout=5).text

    def restart_copilot(self) -> None:
        """Restarts the copilot job's process; Cloud Controller's route syncer then sends its BulkSync."""
        result = supervisor.ctl(self.layout, "restart", "copilot")
        if result.returncode != 0:
            raise RuntimeError(f"supervisorctl restart copilot: {result.stdout}{result.stderr}")
        wait_until(lambda: launch.listening(self.ports["copilot_cc_port"]), timeout=30, message="copilot's CC API")
        launch.cloud_controller_sync(self.layout, self.ports)

    def stop(self) -> None:
        for stopper in (lambda: launch.shutdown(self.layout), *(c.stop for c in self.cells), self.bbs.stop):
            with contextlib.suppress(Exception):  # best-effort teardown
                stopper()


def _pair(layout: Layout, variables: dict, name: str) -> CertPair:
    """A certificate variable of the vars store as PEM files (<pki>/<name>.crt and .key)."""
    layout.pki.mkdir(parents=True, exist_ok=True)
    cert, key = layout.pki / f"{name}.crt", layout.pki / f"{name}.key"
    cert.write_text(variables[name]["certificate"])
    key.write_text(variables[name]["private_key"])
    key.chmod(0o600)
    return CertPair(cert, key)


def _ca(layout: Layout, variables: dict, name: str) -> CA:
    return CA.from_pem(layout.pki, name, variables[name]["certificate"], variables[name]["private_key"])


def start_tier(
    workdir: Path,
    *,
    ops_files: Sequence[Path] = (),
    preload: Callable[[BBSDouble], None] | None = None,
    test_certificates: bool = True,
    routers: dict[str, dict] | None = None,
    ready_timeout: float = 180,
) -> Tier:
    """Renders and starts the tier under `workdir` on free loopback ports; `ops_files` are applied after
    the test certificates; `preload` fills the BBS double before Copilot first lists it. `routers`: more
    routers, each its own instance group (name -> istio-router properties over the local router's, e.g.
    router_shard and node_ip), on free admin and health ports; the tier is up once they are healthy too
    (`ready_timeout` seconds at most, for the local router: benchmarks with many routes wait longer)."""
    layout = Layout(Path(workdir).resolve())
    ports = free_ports(list(launch.default_ports()))
    more = {name: free_ports([f"{name}_admin", f"{name}_health"]) for name in routers or {}}
    router_ports = {
        name: {"admin_port": more[name][f"{name}_admin"], "health_port": more[name][f"{name}_health"]} for name in more
    }
    overrides = {
        name: {
            **properties,
            "admin_port": router_ports[name]["admin_port"],
            "health": {"port": router_ports[name]["health_port"]},
        }
        for name, properties in (routers or {}).items()
    }
    processes = launch.prepare(layout, ports, [*([TEST_OPS] if test_certificates else []), *ops_files], overrides)
    variables = render.variables(layout)
    bbs_server, diego_ca = _pair(layout, variables, "bbs_server"), _ca(layout, variables, "diego_ca")
    bbs = BBSDouble(
        ca_cert=diego_ca.cert_path, server_cert=bbs_server.cert_path, server_key=bbs_server.key_path, port=ports["bbs_port"]
    )
    bbs.start()
    identity_ca = _ca(layout, variables, "diego_instance_identity_ca")
    pki = CellPKI.from_files(
        identity_ca_cert=identity_ca.cert_path,
        identity_ca_key=identity_ca.key_path,
        root_ca_cert=_ca(layout, variables, "application_ca").cert_path,
        trusted_ca_certificates=[_ca(layout, variables, "service_cf_internal_ca").cert_path],
    )
    cell = Cell(layout.root / "cells" / "cell-1", pki)
    tier = Tier(layout, ports, bbs, cell, cells=[cell], routers=router_ports)
    tier.extra.update(
        cell_pki=pki,
        identity_ca=identity_ca,
        router_ca=_ca(layout, variables, "router_ca"),
        upstream_ca=_ca(layout, variables, "platform_ca"),
        service_cf_internal_ca=_ca(layout, variables, "service_cf_internal_ca"),
        registrar_url=f"https://127.0.0.1:{ports['copilot_registrar_port']}",
        registrar_ca=_ca(layout, variables, "registrar_ca").cert_path,
        registrar_client=_pair(layout, variables, "registrar_client"),
    )
    try:
        if preload is not None:
            preload(bbs)
        launch.start(layout, processes)
        if not launch.wait_ready(layout, ports, quiet=True, timeout=ready_timeout):
            raise RuntimeError(f"the tier did not come up:\n{tails(layout)}")
        for name, router in router_ports.items():
            wait_until(lambda port=router["health_port"]: _healthy(port), timeout=60, message=f"router {name} healthy")
    except BaseException:
        tier.stop()
        raise
    return tier


def _healthy(port: int) -> bool:
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200


def start_tier_with_ops(workdir: Path, name: str, ops_yaml: str, routers: dict[str, dict] | None = None) -> Tier:
    """A tier with one more ops-file, given as YAML text (per-test properties), written into `workdir`
    (and more routers: start_tier's `routers`)."""
    ops = Path(workdir) / f"{name}.yml"
    ops.write_text(ops_yaml)
    return start_tier(Path(workdir) / "tier", ops_files=[ops], routers=routers)


def tails(layout: Layout, lines: int = 30) -> str:
    out = []
    for log in sorted([*layout.logs.rglob("*.log"), *(layout.root / "routers").glob("*/sys/log/**/*.log")]):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.relative_to(layout.root)}\n" + "\n".join(text))
    return "\n".join(out)
