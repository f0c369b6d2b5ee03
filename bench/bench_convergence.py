"""Convergence through the real tier as it ships: the release's rendered jobs with their default properties
(manifests/local.yml, as `run-local` runs them: istiod debounce 100 ms, route integrity, the router's client
certificate), app instances behind v58 cell proxies. With N routes in place (2 instances each), each
change is timed from the BBS event (or CC call) to the first response that shows it through Envoy; the
router's cluster count and the RSS of Envoy, istiod and Copilot are printed too. Asserts nothing.

    .venv/bin/python bench/bench_convergence.py [--routes 100 10000] [--changes 100]

Changes: "scale up" (a third instance of a running app: its cell starts it first, as Diego does, then BBS
reports it RUNNING; until a response comes from it), "new app" (a new route's first instance, until the
first 200), "weights" (Cloud Controller maps green at weight 3 beside blue; until green answers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bbs_double.server import BBSDouble  # noqa: E402
from copilot.protos import cc_copilot_pb2 as api  # noqa: E402
from devtools.cell import CellInstance  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from devtools.processes import rss_mib  # noqa: E402
from devtools.tier import Tier, start_tier, wait_until  # noqa: E402

INSTANCES_PER_ROUTE = 2


def footprint(tier: Tier) -> str:
    programs = {"router Envoy": "istio-router-envoy", "istiod": "pilot-discovery", "Copilot": "copilot"}
    sizes = ", ".join(f"{name} {rss_mib(tier.pid(program)):.0f} MiB" for name, program in programs.items())
    return f"router clusters {tier.envoy.cluster_count()}; RSS: {sizes}"


def run(routes: int, changes: int) -> dict[str, list[float]]:
    # The routes in place: Diego's listing when Copilot starts. Their instances report a TLS proxy port
    # nothing listens on (they are load, never asked for); the last route's instances are real.
    unused_port = free_port()
    template = {
        "address": "127.0.0.1",
        "instance_address": "127.1.255.254",
        "host_port": 0,
        "container_tls_proxy_port": 61001,
        "host_tls_proxy_port": unused_port,
    }

    def preload(bbs: BBSDouble) -> None:
        for i in range(routes - 1):
            bbs.desire_lrp(f"bg-{i}", http_routes=[{"hostnames": [f"bg-{i}.apps.example.com"], "port": 8080}], instances=2)
            for index in range(INSTANCES_PER_ROUTE):
                bbs.start_instance(f"bg-{i}", index, **template, instance_guid=f"bg-{i}-{index}")

    timings: dict[str, list[float]] = {"scale up": [], "new app": [], "weights": []}
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        tier = start_tier(Path(workdir), test_certificates=False, preload=preload)
        instances: list[CellInstance] = []
        try:
            last = routes - 1
            tier.bbs.desire_lrp(f"bg-{last}", http_routes=[{"hostnames": [f"bg-{last}.apps.example.com"], "port": 8080}])
            for index in range(INSTANCES_PER_ROUTE):
                instances.append(tier.start_instance(f"bg-{last}", index, f"bg-{last}-{index}"))
            wait_until(lambda: tier.get(f"bg-{last}.apps.example.com").status_code == 200, timeout=1800, message="routes")
            print(f"  {routes} routes x {INSTANCES_PER_ROUTE} instances in place {time.monotonic() - started:.1f}s after start")
            print(f"  {footprint(tier)}", flush=True)
            session = requests.Session()

            def measure(host: str, start, done) -> float:
                t0 = time.perf_counter()
                start()
                while time.perf_counter() - t0 < 120:
                    response = session.get(tier.router_url, headers={"Host": host}, timeout=10)
                    if done(response):
                        break
                return time.perf_counter() - t0

            stub = tier.cc_stub()
            for name in ("blue", "green"):
                tier.bbs.desire_lrp(f"{name}-v1", http_routes=[{"hostnames": [f"{name}.apps.example.com"], "port": 8080}])
                instances.append(tier.start_instance(f"{name}-v1", 0, f"{name}-v1-0"))
                association = api.CapiDiegoProcessAssociation(capi_process_guid=name, diego_process_guids=[f"{name}-v1"])
                stub.UpsertCapiDiegoProcessAssociation(
                    api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
                )

            def map_route(route_guid: str, capi: str, weight: int) -> None:
                mapping = api.RouteMapping(capi_process_guid=capi, route_guid=route_guid, route_weight=weight)
                stub.MapRoute(api.MapRouteRequest(route_mapping=mapping))

            for n in range(changes):
                # Scale up the last route (its instances are real): a third instance.
                guid = f"scaled-{n}"
                scaled = tier.cell.start_instance(guid)
                timings["scale up"].append(
                    measure(
                        f"bg-{last}.apps.example.com",
                        lambda s=scaled: tier.bbs.start_instance(f"bg-{last}", 2, **s.net_info()),
                        lambda r, g=guid: r.text.strip() == g,
                    )
                )
                tier.bbs.remove_instance(f"bg-{last}", 2)
                scaled.stop()
                host = f"new-{n}.apps.example.com"
                tier.bbs.desire_lrp(f"new-{n}", http_routes=[{"hostnames": [host], "port": 8080}])
                wait_until(lambda h=host: tier.get(h).status_code == 503, timeout=120, message="the route without backends")
                fresh = tier.cell.start_instance(f"new-{n}-0")
                timings["new app"].append(
                    measure(
                        host,
                        lambda n=n, f=fresh: tier.bbs.start_instance(f"new-{n}", 0, **f.net_info()),
                        lambda r: r.status_code == 200,
                    )
                )
                tier.bbs.remove_instance(f"new-{n}", 0)
                tier.bbs.remove_desired_lrp(f"new-{n}")
                fresh.stop()
                host = f"weighted-{n}.apps.example.com"
                stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"w-{n}", host=host)))
                map_route(f"w-{n}", "blue", 1)
                wait_until(lambda h=host: tier.get(h).text.strip() == "blue-v1-0", timeout=120, message="blue")
                timings["weights"].append(
                    measure(host, lambda n=n: map_route(f"w-{n}", "green", 3), lambda r: r.text.strip() == "green-v1-0")
                )
            print(f"  after the changes: {footprint(tier)}", flush=True)
            return timings
        finally:
            for instance in instances:
                instance.stop()
            tier.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    print("the tier: manifests/local.yml, every other property at its job default", flush=True)
    for routes in args.routes:
        results = run(routes, args.changes)
        print(f"{'routes':>8} {'change':>9} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}", flush=True)
        for kind, values in results.items():
            values.sort()
            p99 = values[max(0, int(len(values) * 0.99) - 1)]
            print(
                f"{routes:>8} {kind:>9} {len(values):>6} {statistics.median(values) * 1000:>8.1f} {p99 * 1000:>8.1f} "
                f"{values[-1] * 1000:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
