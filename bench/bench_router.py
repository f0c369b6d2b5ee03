"""Router throughput through the tier as it ships: the release's rendered jobs with their default properties
(manifests/local.yml, as `run-local` runs them: route integrity, the router's client certificate to v58 cell
proxies), the access log on (pilot-discovery `access_log.file`, the jobs' default gorouter format), and app
instances that answer by themselves (an Envoy direct response behind each v58 cell proxy), so the router is
what is measured. Loopback only, bounded in time. Asserts nothing.

    .venv/bin/python bench/bench_router.py [--routes 1 1000 10000] [--seconds 10] [--rounds 3]
        [--connections 64] [--baseline REF...] [--request-hosts N] [--warmup-seconds 180]

For each number of routes (one DesiredLRP holding every route, two instances), wrk (Debian's `wrk`) sends
requests spread over every route host (or the first `--request-hosts`) for `--seconds`, once with keep-alive
and once with a new connection per request, and prints per target, after warming it up (runs until one
opens at most as many upstream connections as wrk has: the router opens a connection, a TLS handshake with
its client certificate, per cluster, endpoint and worker; with 1,000 route hosts that takes several runs),
the median over `--rounds` alternating runs of:
- requests per second, p50 and p99 latency (wrk's);
- the router's CPU time per request (utime + stime of the router's Envoy over the run / responses), which
  does not depend on how fast the load generator or the backends are: the figure to compare;
- the router's RSS, and the upstream connections it opened per 1,000 requests (from its /stats).

The router's Envoy runs on CPU 0, everything else (wrk, cell proxies, apps, istiod, Copilot) on CPU 1.
Targets, measured in the same run so the machine's noise cancels in their ratios:
- `tier`: this tree's router;
- `minimal`: the same Envoy binary with a hand-written configuration (one listener, one route, one
  cluster to the same two instances with the same TLS and identity check, no other filter, no access
  log): what the generated configuration costs on top of Envoy itself;
- `minimal-<N>c` (with more than one route host): the same with a virtual host and a cluster per route
  host, as the tier has: what a connection pool per host costs by itself;
- each `--baseline REF`: the router of another commit (a git worktree of REF, started with this file's
  `--serve` mode: REF's jobs, manifests and Copilot, this tree's devtools, local_tier, bbs_double and
  bosh_render), to compare a change with the previous commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_ROUTER_SRC", str(REPO / "src")))

from devtools.processes import rss_mib  # noqa: E402

ROUTER_CPU, OTHERS_CPU = 0, 1
APPARATUS = ("devtools", "local_tier", "bbs_double", "bosh_render")
PROCESS_GUID = "bench-app"
INSTANCES = 2
ROUTES_PER_ENTRY = 500  # hostnames per DesiredLRP route entry
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
READY_MARKER = "bench-router-ready "
ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


def host_name(i: int) -> str:
    return f"r-{i}.apps.example.com"


# ---------------------------------------------------------------------------------------------------- serving


def serve(routes: int, workdir: Path, access_log: bool) -> None:
    """Start a tier with `routes` routes and two instances; print one JSON line saying where its router is;
    stop when stdin closes. Runs in the tree whose src/ is on sys.path (this tree, or --baseline's)."""
    from devtools.tier import start_tier, wait_until
    from local_tier import render

    workdir.mkdir(parents=True, exist_ok=True)
    access_log_ops = workdir / "access-log.yml"
    access_log_ops.write_text(
        "- type: replace\n"
        "  path: /instance_groups/name=local/jobs/name=pilot-discovery/properties/access_log?/file\n"
        f"  value: {workdir / 'router-access.log'}\n"
    )
    tier = start_tier(workdir / "tier", test_certificates=False, ops_files=[access_log_ops] if access_log else [])
    try:
        hostnames = [host_name(i) for i in range(routes)]
        entries = [{"hostnames": hostnames[i : i + ROUTES_PER_ENTRY], "port": 8080} for i in range(0, routes, ROUTES_PER_ENTRY)]
        tier.bbs.desire_lrp(PROCESS_GUID, http_routes=entries, instances=INSTANCES)
        instances = [
            tier.start_instance(PROCESS_GUID, index, f"{PROCESS_GUID}-{index}", app="envoy-http") for index in range(INSTANCES)
        ]
        for host in {hostnames[0], hostnames[-1]}:
            wait_until(lambda h=host: tier.get(h).status_code == 200, timeout=1800, message=f"{host} routed")
        variables = render.variables(tier.layout)
        print(
            READY_MARKER
            + json.dumps(
                {
                    "router_port": tier.http_port,
                    "router_admin_port": tier.envoy.port,
                    "router_pid": tier.pid("istio-router-envoy"),
                    "istiod_pid": tier.pid("pilot-discovery"),
                    "clusters": tier.envoy.cluster_count(),
                    "backends": [
                        {"address": i.cell_ip, "port": i.net_info()["host_tls_proxy_port"], "guid": i.instance_guid}
                        for i in instances
                    ],
                    "client_certificate": variables["gorouter_backend_tls"],
                    "identity_ca": tier.extra["identity_ca"].cert_path.read_text(),
                }
            ),
            flush=True,
        )
        sys.stdin.read()
    finally:
        tier.stop()


@dataclass
class Target:
    """A router to send load to: its HTTP port, its Envoy's admin port and pid, and how to stop it."""

    name: str
    port: int
    admin_port: int
    pid: int
    stop: Callable[[], None]


def _stopper(process: subprocess.Popen) -> Callable[[], None]:
    def stop() -> None:
        if process.poll() is None:
            if process.stdin is not None:
                process.stdin.close()  # serve() stops its tier when stdin closes
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    return stop


def start_served(name: str, routes: int, workdir: Path, src: Path, access_log: bool) -> tuple[Target, dict]:
    """Run `serve` in a child process with `src` as its code; return its router once it is routing."""
    env = {**os.environ, "BENCH_ROUTER_SRC": str(src), "PYTHONPATH": str(src)}
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(routes), "--workdir", str(workdir)]
    argv.append("--access-log" if access_log else "--no-access-log")
    log = (workdir.parent / f"{name}-serve.log").open("w")
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY_MARKER):
            break
    else:
        process.wait()
        log.close()
        tail = "\n".join(Path(log.name).read_text().splitlines()[-40:])
        raise RuntimeError(f"{name}: the tier did not start:\n{tail}")
    info = json.loads(line.removeprefix(READY_MARKER))
    pin(info["router_pid"], ROUTER_CPU)
    return Target(name, info["router_port"], info["router_admin_port"], info["router_pid"], _stopper(process)), info


# ---------------------------------------------------------------------------------------------------- minimal


def start_minimal(info: dict, workdir: Path, cluster_per_host: int = 0) -> Target:
    """The same Envoy with one listener, one route, one cluster to the tier's instances (TLS with the
    router's client certificate, SNI and SAN = the instance guid, as route integrity checks it). With
    `cluster_per_host` N: a virtual host and a cluster (the same endpoints and TLS) for each of the N
    route hosts, as the tier has, so a connection pool per host: what that alone costs."""
    from devtools import peers
    from devtools.ports import free_port, wait_for_port
    from devtools.processes import ManagedProcess

    workdir.mkdir(parents=True, exist_ok=True)
    cert, key, ca = workdir / "client.crt", workdir / "client.key", workdir / "identity-ca.crt"
    cert.write_text(info["client_certificate"]["certificate"])
    key.write_text(info["client_certificate"]["private_key"])
    ca.write_text(info["identity_ca"])
    port, admin = free_port(), free_port()
    tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "auto_host_sni": True,
            "auto_sni_san_validation": True,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
                "validation_context": {"trusted_ca": {"filename": str(ca)}},
            },
        },
    }
    endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": b["address"], "port_value": b["port"]}},
                "hostname": b["guid"],
            }
        }
        for b in info["backends"]
    ]

    def cluster(name: str) -> dict:
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
            "transport_socket": tls,
        }

    def virtual_host(name: str, domain: str, cluster: str) -> dict:
        return {"name": name, "domains": [domain], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}

    if cluster_per_host:
        hosts = [host_name(i) for i in range(cluster_per_host)]
        clusters = [cluster(host) for host in hosts]
        virtual_hosts = [virtual_host(host, host, host) for host in hosts]
    else:
        clusters = [cluster("app")]
        virtual_hosts = [virtual_host("all", "*", "app")]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "minimal",
        "route_config": {"virtual_hosts": virtual_hosts},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_FILTER}}],
    }
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    argv = [str(peers.envoy()), "-c", str(path), "--disable-hot-restart", "--log-level", "error"]
    process = ManagedProcess("minimal-envoy", argv, workdir / "envoy.log").start()
    if not wait_for_port(port, timeout=30):
        process.stop()
        raise RuntimeError(f"the minimal Envoy did not start:\n{process.log_tail()}")
    pid = process.proc.pid
    pin(pid, ROUTER_CPU)
    return Target(f"minimal-{cluster_per_host}c" if cluster_per_host else "minimal", port, admin, pid, process.stop)


# ---------------------------------------------------------------------------------------------------- measuring


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` on `cpu` (threads Envoy starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WRK_SCRIPT = """
local hosts = tonumber(os.getenv("BENCH_HOSTS"))
local close = os.getenv("BENCH_CLOSE") == "1"
local i = 0
request = function()
  i = i % hosts
  local headers = {Host = "r-" .. i .. ".apps.example.com"}
  if close then headers["Connection"] = "close" end
  i = i + 1
  return wrk.format("GET", "/", headers)
end
"""


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    requests: int
    upstream_connections: int  # opened by the router during the run: a TLS handshake to a cell proxy each


def upstream_connections(target: Target) -> int:
    """Connections the router has opened to its clusters' endpoints so far (every cluster's
    upstream_cx_total; the xDS and SDS clusters' do not move during a run)."""
    url = f"http://127.0.0.1:{target.admin_port}/stats?filter=upstream_cx_total$"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if ":" in line)


def run_wrk(target: Target, hosts: int, close: bool, seconds: int, connections: int, script: Path) -> Run:
    env = {**os.environ, "BENCH_HOSTS": str(hosts), "BENCH_CLOSE": "1" if close else "0"}
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script)]
    argv.append(f"http://127.0.0.1:{target.port}/")
    connections_before = upstream_connections(target)
    cpu_before = cpu_seconds(target.pid)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    cpu = cpu_seconds(target.pid) - cpu_before
    opened = upstream_connections(target) - connections_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * _UNITS[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Run(rps, latency("50"), latency("99"), cpu / max(requests, 1) * 1e6, errors, requests, opened)


def warm_up(target: Target, hosts: int, close: bool, args: argparse.Namespace, script: Path) -> str:
    """Send load until the router's upstream connection pools are warm: a run opens at most as many
    connections as wrk has (wrk resets the requests in flight when a run ends, and the router then
    closes those upstream connections). Every route host is a cluster with its own pool (per endpoint
    and worker), each new connection a TLS handshake with the client certificate: with 1,000 hosts
    one 5 s run does not open them all, and measuring then would count handshakes, not requests."""
    began, runs = time.monotonic(), 0
    while True:
        run = run_wrk(target, hosts, close, args.seconds, args.connections, script)
        runs += 1
        if run.upstream_connections <= args.connections:
            return f"warm after {runs} run(s)"
        if time.monotonic() - began > args.warmup_seconds:
            return f"NOT warm after {runs} runs ({run.upstream_connections} upstream connections opened in the last)"


def measure(targets: list[Target], hosts: int, args: argparse.Namespace, script: Path) -> None:
    for close in (False, True):
        mode = "new connection per request" if close else f"keep-alive, {args.connections} connections"
        print(f"  {mode}:", flush=True)
        runs: dict[str, list[Run]] = {t.name: [] for t in targets}
        warm = {target.name: warm_up(target, hosts, close, args, script) for target in targets}
        for _ in range(args.rounds):
            for target in targets:
                # When a run ends wrk resets the requests in flight, and the router closes their upstream
                # connections: a second of load first, not counted, opens them again, so the run counts
                # requests, not the previous run's end (a TLS handshake each, worth about 20 requests).
                run_wrk(target, hosts, close, 1, args.connections, script)
                # minimal has one route: every host name reaches it, as every route reaches the tier's app.
                runs[target.name].append(run_wrk(target, hosts, close, args.seconds, args.connections, script))
        base = statistics.median(r.cpu_us_per_request for r in runs[targets[0].name])
        for target in targets:
            rs = runs[target.name]
            cpu = statistics.median(r.cpu_us_per_request for r in rs)
            errors = sum(r.errors for r in rs)
            handshakes = sum(r.upstream_connections for r in rs) / max(sum(r.requests for r in rs), 1) * 1000
            print(
                f"    {target.name:>12}: {statistics.median(r.rps for r in rs):9.0f} req/s"
                f"  p50 {statistics.median(r.p50_ms for r in rs):6.2f} ms  p99 {statistics.median(r.p99_ms for r in rs):6.2f} ms"
                f"  router CPU {cpu:6.1f} us/request ({base / cpu:4.2f}x {targets[0].name}'s requests per CPU second)"
                f"  RSS {rss_mib(target.pid):6.0f} MiB  upstream connections opened {handshakes:4.1f}/1000 requests"
                f"  ({warm[target.name]})" + (f"  ERRORS {errors}" if errors else ""),
                flush=True,
            )


def baseline_tree(ref: str, tree: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True)
    (tree / ".venv").symlink_to(REPO / ".venv")
    # The measuring apparatus (cells, apps, the BBS double, rendering and starting the tier) is this tree's;
    # the product measured (jobs, manifests, Copilot, the router's programs) is REF's.
    for apparatus in APPARATUS:
        shutil.rmtree(tree / "src" / apparatus, ignore_errors=True)
        shutil.copytree(REPO / "src" / apparatus, tree / "src" / apparatus, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(tree / "scripts" / "gen-protos")], check=True, capture_output=True, cwd=tree)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--request-hosts",
        type=int,
        metavar="N",
        help="spread requests over the first N route hosts only (default: all). Warm pools for H hosts take"
        " 2 x H upstream connections per router worker, and as many through each cell's garden double, two"
        " descriptors each: with 10,000 hosts more than a 20,000 descriptor limit allows",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=int,
        default=180,
        help="at most this long per target and mode sending load until its upstream pools are warm",
    )
    parser.add_argument("--baseline", metavar="REF", nargs="+", default=[], help="also measure the routers of these commits")
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the routers write gorouter's access log to a file (default: on, as gorouter always does)",
    )
    parser.add_argument("--serve", type=int, metavar="ROUTES", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help="keep every tier's files and logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.workdir, args.access_log)
        return 0
    if shutil.which("wrk") is None:
        print("bench_router needs wrk: sudo apt-get install -y wrk", file=sys.stderr)
        return 1
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        print("bench_router needs two CPUs (the router on one, the rest on the other)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {OTHERS_CPU})  # inherited by every process started from here
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        workdir = args.workdir.resolve() if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "hosts.lua"
        script.write_text(WRK_SCRIPT)
        baselines = {ref: baseline_tree(ref, workdir / f"baseline-tree-{n}") for n, ref in enumerate(args.baseline)}
        try:
            for routes in args.routes:
                started = time.monotonic()
                targets: list[Target] = []
                try:
                    tier, info = start_served("tier", routes, workdir / f"tier-{routes}", REPO / "src", args.access_log)
                    targets.append(tier)
                    for n, (ref, tree) in enumerate(baselines.items()):
                        targets.append(
                            start_served(ref, routes, workdir / f"baseline-{n}-{routes}", tree / "src", args.access_log)[0]
                        )
                    spread = min(routes, args.request_hosts or routes)
                    targets.append(start_minimal(info, workdir / f"minimal-{routes}"))
                    if spread > 1:
                        targets.append(start_minimal(info, workdir / f"minimal-{routes}-clusters", cluster_per_host=spread))
                    print(
                        f"{routes} routes x {INSTANCES} instances ({info['clusters']} router clusters), ready in"
                        f" {time.monotonic() - started:.0f} s; istiod RSS {rss_mib(info['istiod_pid']):.0f} MiB;"
                        f" requests spread over {spread} route hosts",
                        flush=True,
                    )
                    measure(targets, spread, args, script)
                finally:
                    for target in targets:
                        target.stop()
        finally:
            for tree in baselines.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
