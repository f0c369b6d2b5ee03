"""Router memory per route host through the real tier as it ships: the release's rendered jobs with their
default properties (manifests/local.yml: route integrity with the router's client certificate, v58 cell
proxies), as bench_convergence.py starts them. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_router_memory.py [--routes 10000] [--hosts-per-lrp 1] [--ops-file FILE ...]
        [--settle 30] [--late 300] [--baseline REF]

With the tier up and no app routes, the router's state is read ("before"); then N route hosts arrive
from BBS as DesiredLRPs of `--hosts-per-lrp` hostnames each, with 2 instances per LRP. The default, 1,
is one app per host, the worst case: every host has its own app, so its own cluster (a service with 2
endpoints) besides its VirtualService. More hosts per LRP is the many-domains-on-one-app case (its
hosts share their app's cluster since hosts share services; before, each host had a cluster of its own).
Plus one route whose 2 instances are real (behind v58 cell proxies): once it answers 200 through the
router, the router holds every route. Then the N hosts are removed (BBS events) and, once the router
answers 404 for them, the state is read again after `--settle` seconds and once more `--late` seconds
after that, so one sees whether memory comes back. For each state: Envoy's clusters, listeners, route
configurations and virtual hosts (admin API), its RSS and tcmalloc's allocated / heap figures, istiod's
and Copilot's RSS. KiB per route host is
(Envoy RSS with the routes - before) / N; the same from tcmalloc's allocated bytes (the heap in use,
steadier than RSS) is printed beside it. With the routes in place one more host is added, which costs
istiod a full push: the route configuration bytes istiod sent the router for it (istiod's
pilot_xds_config_size_bytes) are what every full push costs in RDS. `--ops-file` applies an ops-file on
top (to measure a lever without changing a default). `--baseline REF` first measures the tier of another
commit (a git worktree of REF: its jobs, manifests and Copilot, this tree's measuring apparatus, as
bench_router.py does) in the same run, one tier at a time. Loopback only; the background instances'
addresses are never connected to.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
# The tree measured: this one, or a --baseline worktree (its src/, with this tree's apparatus copied in).
SRC_ENV = "BENCH_ROUTER_MEMORY_SRC"
sys.path.insert(0, os.environ.get(SRC_ENV, str(REPO / "src")))

from bbs_double.server import BBSDouble  # noqa: E402
from devtools.cell import CellInstance  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from devtools.processes import rss_mib  # noqa: E402
from devtools.tier import Tier, start_tier, wait_until  # noqa: E402

INSTANCES_PER_ROUTE = 2
HOSTS_PER_LRP = 1  # one app per host: the worst case (every host a cluster of its own)
DOMAIN = "apps.example.com"
# The local tier's router certificate names *.apps.local: hosts there are under a certificate, as a
# foundation's app domain is under its routers' (istiod then repeats them in that certificate's routes).
CERTIFICATE_DOMAIN = "apps.local"
PROGRAMS = {"envoy": "istio-router-envoy", "istiod": "pilot-discovery", "copilot": "copilot"}
MEMORY_STATS = ("server.memory_allocated", "server.memory_heap_size", "server.memory_physical_size")
RDS_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


@dataclass
class State:
    clusters: int
    listeners: int
    route_configs: int
    virtual_hosts: int
    rss_mib: dict[str, float]
    tcmalloc_mib: dict[str, float]

    def line(self, label: str) -> str:
        rss = ", ".join(f"{name} {value:.0f}" for name, value in self.rss_mib.items())
        heap = ", ".join(f"{name.removeprefix('server.memory_')} {v:.0f}" for name, v in self.tcmalloc_mib.items())
        return (
            f"  {label:<22} clusters {self.clusters:>7}  listeners {self.listeners:>2}  route configs "
            f"{self.route_configs:>2}  virtual hosts {self.virtual_hosts:>7}  RSS MiB: {rss}  (Envoy tcmalloc MiB: {heap})"
        )


def _stats(tier: Tier, names: tuple[str, ...]) -> dict[str, int]:
    pattern = "|".join(f"^{name}$" for name in names)
    text = requests.get(f"http://127.0.0.1:{tier.envoy.port}/stats", params={"filter": pattern}, timeout=30).text
    pairs = (line.rsplit(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): int(value) for name, value in pairs}


def read_state(tier: Tier) -> State:
    stats = _stats(tier, ("cluster_manager.active_clusters", "listener_manager.total_listeners_active", *MEMORY_STATS))
    # Counted in the text: at 100,000 hosts the dump is hundreds of MB, parsing it would cost GBs here.
    dump = requests.get(
        f"http://127.0.0.1:{tier.envoy.port}/config_dump", params={"resource": "dynamic_route_configs"}, timeout=600
    ).text
    return State(
        clusters=stats["cluster_manager.active_clusters"],
        listeners=stats["listener_manager.total_listeners_active"],
        route_configs=dump.count('"route_config":'),
        virtual_hosts=dump.count('"domains":'),
        rss_mib={name: rss_mib(tier.pid(program)) for name, program in PROGRAMS.items()},
        tcmalloc_mib={name: stats[name] / 2**20 for name in MEMORY_STATS},
    )


def rds_sent(tier: Tier) -> tuple[float, int]:
    """Route configuration bytes istiod has sent so far, and in how many pushes (its own metric)."""
    text = requests.get(f"http://127.0.0.1:{tier.ports['istiod_monitoring_port']}/metrics", timeout=30).text
    figures = {}
    for kind in ("sum", "count"):
        match = re.search(rf'^pilot_xds_config_size_bytes_{kind}{{type="{re.escape(RDS_TYPE)}"}} (\S+)$', text, re.M)
        figures[kind] = float(match.group(1)) if match else 0.0
    return figures["sum"], int(figures["count"])


def run(
    routes: int, ops_files: list[Path], settle: float, late_seconds: float, domain: str = DOMAIN, per_lrp: int = HOSTS_PER_LRP
) -> None:
    # The background instances report a TLS proxy port nothing listens on: load, never asked for.
    template = {
        "address": "127.0.0.1",
        "instance_address": "127.1.255.254",
        "host_port": 0,
        "container_tls_proxy_port": 61001,
        "host_tls_proxy_port": free_port(),
    }
    lrps = [f"bg-{start}" for start in range(0, routes, per_lrp)]

    def load(bbs: BBSDouble) -> None:
        for start, guid in zip(range(0, routes, per_lrp), lrps, strict=True):
            hosts = [f"bg-{i}.{domain}" for i in range(start, min(start + per_lrp, routes))]
            bbs.desire_lrp(guid, http_routes=[{"hostnames": hosts, "port": 8080}], instances=INSTANCES_PER_ROUTE)
            for index in range(INSTANCES_PER_ROUTE):
                bbs.start_instance(guid, index, **template, instance_guid=f"{guid}-{index}")

    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.monotonic()
        tier = start_tier(Path(workdir), test_certificates=False, ops_files=ops_files)
        instances: list[CellInstance] = []
        try:
            print(f"  tier up in {time.monotonic() - t0:.1f}s", flush=True)
            time.sleep(settle)  # let the fresh processes' memory settle before the baseline (a reading, not a wait)
            before = read_state(tier)
            print(before.line("before (no app routes)"), flush=True)

            t0 = time.monotonic()
            load(tier.bbs)
            tier.bbs.desire_lrp("probe", http_routes=[{"hostnames": [f"probe.{domain}"], "port": 8080}])
            for index in range(INSTANCES_PER_ROUTE):
                instances.append(tier.start_instance("probe", index, f"probe-{index}"))
            # Copilot publishes whole states in event order: the probe routed means every host before it is.
            wait_until(lambda: tier.get(f"probe.{domain}").status_code == 200, timeout=3600, interval=1, message="routes")
            wait_until(lambda: tier.get(f"bg-{routes - 1}.{domain}").status_code != 404, timeout=600, message="last host")
            elapsed = time.monotonic() - t0
            print(
                f"  {routes} route hosts ({len(lrps)} apps of {per_lrp} hosts) x {INSTANCES_PER_ROUTE} instances routed"
                f" {elapsed:.1f}s after the first event"
            )
            time.sleep(settle)
            loaded = read_state(tier)
            print(loaded.line(f"with {routes} routes"), flush=True)

            # One more host: a new VirtualService, so istiod sends the router every route configuration.
            sent, pushes = rds_sent(tier)
            tier.bbs.desire_lrp("probe-rds", http_routes=[{"hostnames": [f"probe-rds.{domain}"], "port": 8080}])
            wait_until(lambda: tier.get(f"probe-rds.{domain}").status_code != 404, timeout=600, interval=0.5, message="probe-rds")
            sent_after, pushes_after = rds_sent(tier)
            print(
                f"  one more host: istiod sent the router {(sent_after - sent) / 2**20:.1f} MiB of route configurations"
                f" in {pushes_after - pushes} RDS push(es)",
                flush=True,
            )
            tier.bbs.remove_desired_lrp("probe-rds")

            t0 = time.monotonic()
            for guid in lrps:
                for index in range(INSTANCES_PER_ROUTE):
                    tier.bbs.remove_instance(guid, index)
                tier.bbs.remove_desired_lrp(guid)
            wait_until(
                lambda: (
                    tier.get(f"bg-{routes - 1}.{domain}").status_code == 404 and tier.envoy.cluster_count() <= before.clusters + 2
                ),
                timeout=3600,
                interval=1,
                message="routes removed",
            )
            print(f"  routes removed {time.monotonic() - t0:.1f}s after the first event", flush=True)
            time.sleep(settle)
            after = read_state(tier)
            print(after.line(f"removed, {settle:.0f}s later"), flush=True)
            if tier.get(f"probe.{domain}").status_code != 200:
                print("  WARNING: the probe route stopped answering 200 after the removal", flush=True)
            late = None
            if late_seconds > 0:
                # tcmalloc returns freed pages gradually (it keeps what was in use at its recent peak for a
                # while): a second reading later shows what the allocator eventually hands back.
                time.sleep(late_seconds)
                late = read_state(tier)
                print(late.line(f"removed, {settle + late_seconds:.0f}s later"), flush=True)

            grown = loaded.rss_mib["envoy"] - before.rss_mib["envoy"]
            kept = (late or after).rss_mib["envoy"] - before.rss_mib["envoy"]
            allocated = loaded.tcmalloc_mib["server.memory_allocated"] - before.tcmalloc_mib["server.memory_allocated"]
            print(
                f"  Envoy: {grown * 1024 / routes:.1f} KiB per route host ({grown:.0f} MiB for {routes}; allocated "
                f"{allocated * 1024 / routes:.1f} KiB per host); "
                f"{(loaded.clusters - before.clusters) / routes:.2f} clusters per host; after removal "
                f"{kept:.0f} MiB above before ({100 * kept / grown if grown > 0 else 0:.0f}% of the growth kept)",
                flush=True,
            )
            for name in ("istiod", "copilot"):
                print(
                    f"  {name}: {before.rss_mib[name]:.0f} -> {loaded.rss_mib[name]:.0f} -> {after.rss_mib[name]:.0f} MiB "
                    f"({(loaded.rss_mib[name] - before.rss_mib[name]) * 1024 / routes:.1f} KiB per route host)",
                    flush=True,
                )
        finally:
            for instance in instances:
                instance.stop()
            tier.stop()


def baseline_tree(ref: str, tree: Path) -> Path:
    """A worktree of `ref` whose product (jobs, manifests, Copilot) is ref's and whose measuring apparatus
    (bench_router.py's APPARATUS: the cells, the BBS double, rendering and starting the tier) is this tree's."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_router  # noqa: PLC0415 (only for --baseline; its module starts nothing)

    return bench_router.baseline_tree(ref, tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[10_000])
    parser.add_argument(
        "--hosts-per-lrp", type=int, default=HOSTS_PER_LRP, help="route hosts per app (1: one app per host, the worst case)"
    )
    parser.add_argument("--ops-file", type=Path, action="append", default=[], help="an ops-file applied on top")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds between a change and its reading")
    parser.add_argument("--late", type=float, default=300.0, help="seconds after the settled reading for a last one (0: none)")
    parser.add_argument("--baseline", metavar="REF", help="first measure the tier of this commit, in the same run")
    parser.add_argument(
        "--domain", default=DOMAIN, help=f"the hosts' domain ({CERTIFICATE_DOMAIN}: under the router's certificate)"
    )
    args = parser.parse_args()
    extra = f", plus {', '.join(map(str, args.ops_file))}" if args.ops_file else ""
    print(f"the tier: manifests/local.yml, every other property at its job default{extra}", flush=True)
    ops_files = [path.resolve() for path in args.ops_file]
    if not args.baseline:
        for routes in args.routes:
            run(routes, ops_files, args.settle, args.late, args.domain, args.hosts_per_lrp)
        return
    with tempfile.TemporaryDirectory(prefix="bench-router-memory-") as tmp:
        tree = baseline_tree(args.baseline, Path(tmp) / "baseline")
        try:
            for routes in args.routes:
                print(f"{routes} route hosts, baseline {args.baseline}:", flush=True)
                command = [sys.executable, str(Path(__file__).resolve()), "--routes", str(routes), "--settle", str(args.settle)]
                command += ["--late", str(args.late), "--domain", args.domain, "--hosts-per-lrp", str(args.hosts_per_lrp)]
                command += [f"--ops-file={path}" for path in ops_files]
                subprocess.run(command, check=True, env={**os.environ, SRC_ENV: str(tree / "src")})
                print(f"{routes} route hosts, this tree:", flush=True)
                run(routes, ops_files, args.settle, args.late, args.domain, args.hosts_per_lrp)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
