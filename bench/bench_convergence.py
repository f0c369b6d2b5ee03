"""Convergence through the real tier: from the BBS event that reports an instance RUNNING to the first
response from it through Envoy, with N routes already in place. Prints p50/p99; asserts nothing.

    .venv/bin/python bench/bench_convergence.py [--routes 100 10000] [--changes 100]
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
from devtools.apps import AppInstance  # noqa: E402
from devtools.tier import start_tier, wait_until  # noqa: E402


def run(routes: int, changes: int, apps: list[AppInstance]) -> dict[str, list[float]]:
    """Two kinds of change, `changes` of each: an app scaling up (a new instance of a route that already
    has one: until a response comes from the new instance), and a new app's first instance (until the
    first 200; istiod answers this one with a full push, as a new service's first endpoints need one),
    and a weight change through the Cloud Controller API (until the newly weighted process answers)."""
    app = apps[0]

    def preload(bbs: BBSDouble) -> None:
        for i in range(routes):
            bbs.desire_lrp(f"bg-{i}", http_routes=[{"hostnames": [f"bg-{i}.apps.example.com"], "port": 8080}], instances=2)
            bbs.start_instance(f"bg-{i}", 0, host_port=app.port, instance_guid=f"bg-{i}-0")

    timings: dict[str, list[float]] = {"scale up": [], "new app": [], "weights": []}
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        tier = start_tier(Path(workdir), preload=preload)
        try:
            session = requests.Session()
            last = f"bg-{routes - 1}.apps.example.com"
            wait_until(lambda: tier.get(last).status_code == 200, timeout=600, message="the preloaded routes")
            print(f"  {routes} routes in place {time.monotonic() - started:.1f}s after start", flush=True)
            time.sleep(2)

            def measure(host: str, start, done) -> float:
                t0 = time.perf_counter()
                start()
                while time.perf_counter() - t0 < 60:
                    response = session.get(tier.router_url, headers={"Host": host}, timeout=5)
                    if done(response):
                        break
                    time.sleep(0.002)
                return time.perf_counter() - t0

            stub = tier.cc_stub()
            blue, green = apps[1], apps[2]
            for name, app in (("blue", blue), ("green", green)):
                tier.bbs.desire_lrp(f"{name}-v1", http_routes=[{"hostnames": [f"{name}.apps.example.com"], "port": 8080}])
                tier.bbs.start_instance(f"{name}-v1", 0, host_port=app.port, instance_guid=app.instance_guid)
                association = api.CapiDiegoProcessAssociation(capi_process_guid=name, diego_process_guids=[f"{name}-v1"])
                stub.UpsertCapiDiegoProcessAssociation(
                    api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
                )

            def map_route(route_guid: str, capi: str, weight: int) -> None:
                mapping = api.RouteMapping(capi_process_guid=capi, route_guid=route_guid, route_weight=weight)
                stub.MapRoute(api.MapRouteRequest(route_mapping=mapping))

            for n in range(changes):
                i = (n * 7919) % routes
                new_app = apps[1 + n % (len(apps) - 1)]
                timings["scale up"].append(
                    measure(
                        f"bg-{i}.apps.example.com",
                        lambda i=i, a=new_app: tier.bbs.start_instance(f"bg-{i}", 1, host_port=a.port, instance_guid=f"bg-{i}-1"),
                        lambda r, a=new_app: r.text.strip() == a.instance_guid,
                    )
                )
                tier.bbs.remove_instance(f"bg-{i}", 1)
                host = f"new-{n}.apps.example.com"
                tier.bbs.desire_lrp(f"new-{n}", http_routes=[{"hostnames": [host], "port": 8080}])
                wait_until(lambda h=host: tier.get(h).status_code == 503, timeout=60, message="the route without backends")
                timings["new app"].append(
                    measure(
                        host,
                        lambda n=n: tier.bbs.start_instance(f"new-{n}", 0, host_port=app.port, instance_guid=f"new-{n}-0"),
                        lambda r: r.status_code == 200,
                    )
                )
                # A weight change through the CC API: a route served by blue alone gets green at weight 3,
                # timed until green answers.
                host = f"weighted-{n}.apps.example.com"
                stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"w-{n}", host=host)))
                map_route(f"w-{n}", "blue", 1)
                wait_until(lambda h=host: tier.get(h).text.strip() == blue.instance_guid, timeout=60, message="blue")
                timings["weights"].append(
                    measure(host, lambda n=n: map_route(f"w-{n}", "green", 3), lambda r: r.text.strip() == green.instance_guid)
                )
            return timings
        finally:
            tier.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    apps = [AppInstance("bench-app")] + [AppInstance(f"scaled-{k}") for k in range(4)]
    print(f"{'routes':>8} {'change':>9} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}", flush=True)
    for routes in args.routes:
        for kind, values in run(routes, args.changes, apps).items():
            values.sort()
            p99 = values[max(0, int(len(values) * 0.99) - 1)]
            print(
                f"{routes:>8} {kind:>9} {len(values):>6} {statistics.median(values) * 1000:>8.1f} {p99 * 1000:>8.1f} "
                f"{values[-1] * 1000:>8.1f}",
                flush=True,
            )
    for app in apps:
        app.stop()


if __name__ == "__main__":
    main()
