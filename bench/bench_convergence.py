"""Convergence through the real tier: from the BBS event that reports an instance RUNNING to the first
200 through Envoy, with N routes already in place. Prints p50/p99; asserts nothing.

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
from devtools.apps import AppInstance  # noqa: E402
from devtools.tier import start_tier, wait_until  # noqa: E402


def run(routes: int, changes: int, app: AppInstance) -> list[float]:
    def preload(bbs: BBSDouble) -> None:
        for i in range(routes):
            bbs.desire_lrp(f"bg-{i}", http_routes=[{"hostnames": [f"bg-{i}.apps.example.com"], "port": 8080}])
            bbs.start_instance(f"bg-{i}", 0, host_port=app.port, instance_guid=f"bg-{i}-0")

    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        tier = start_tier(Path(workdir), preload=preload)
        try:
            session = requests.Session()
            last = f"bg-{routes - 1}.apps.example.com"
            wait_until(lambda: tier.get(last).status_code == 200, timeout=300, message="the preloaded routes")
            print(f"  {routes} routes in place {time.monotonic() - started:.1f}s after start", flush=True)
            timings = []
            for n in range(changes):
                host = f"new-{n}.apps.example.com"
                tier.bbs.desire_lrp(f"new-{n}", http_routes=[{"hostnames": [host], "port": 8080}])
                wait_until(lambda h=host: tier.get(h).status_code == 503, timeout=60, message="the route without backends")
                t0 = time.perf_counter()
                tier.bbs.start_instance(f"new-{n}", 0, host_port=app.port, instance_guid=f"new-{n}-0")
                deadline = t0 + 30
                while time.perf_counter() < deadline:
                    response = session.get(tier.router_url, headers={"Host": host}, timeout=5)
                    if response.status_code == 200:
                        break
                    time.sleep(0.002)
                timings.append(time.perf_counter() - t0)
            return timings
        finally:
            tier.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    app = AppInstance("bench-app")
    print(f"{'routes':>8} {'changes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for routes in args.routes:
        timings = sorted(run(routes, args.changes, app))
        p99 = timings[max(0, int(len(timings) * 0.99) - 1)]
        print(f"{routes:>8} {len(timings):>8} {statistics.median(timings) * 1000:>8.1f} {p99 * 1000:>8.1f} "
              f"{timings[-1] * 1000:>8.1f}", flush=True)
    app.stop()


if __name__ == "__main__":
    main()
