"""Copilot alone: full rebuild time and peak memory at N routes (2 instances each), and the time to apply
one BBS event at that size. The full rebuild is the BBS slice taking the listing (with the cyclic GC
paused, as the BBS watcher takes it) and the publish of every host. Prints figures; asserts nothing.
Each size runs in its own process so peak RSS is that size's own.

    .venv/bin/python bench/bench_copilot.py [--routes 10000 100000] [--events 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from copilot import gc_pause  # noqa: E402
from copilot.istio.kinds import VIRTUAL_SERVICE  # noqa: E402
from copilot.model import HttpRoute, Instance, PortMapping, ProcessRoutes  # noqa: E402
from copilot.protos import bbs_pb2  # noqa: E402
from copilot.publisher import Publisher  # noqa: E402
from copilot.settings import GatewaySettings  # noqa: E402
from copilot.sources.bbs_client import Event  # noqa: E402
from copilot.sources.bbs_watcher import apply_event  # noqa: E402
from copilot.views import Views  # noqa: E402
from copilot.xds.encoding import encode_response  # noqa: E402
from copilot.xds.store import Store  # noqa: E402


def _instance(guid: str, index: int, port: int) -> Instance:
    return Instance(
        guid,
        index,
        f"{guid}-{index}",
        "RUNNING",
        True,
        f"10.{index}.{port // 256 % 256}.{port % 256}",
        "",
        False,
        (PortMapping(8080, 61000 + index),),
        "z1",
    )


def measure(routes: int, events: int) -> dict:
    processes = {f"pg-{i}": ProcessRoutes(http=(HttpRoute(f"app-{i}.apps.example.com", "", 8080),)) for i in range(routes)}
    instances = {f"pg-{i}": {(idx, f"pg-{i}-{idx}", 0): _instance(f"pg-{i}", idx, i) for idx in range(2)} for i in range(routes)}
    views, snapshot = Views(), Store()
    publisher = Publisher(views, snapshot, GatewaySettings())
    started = time.perf_counter()
    with gc_pause.paused():  # as the BBS watcher takes a listing
        views.bbs.replace(processes, instances)
    publisher.publish()
    rebuild = time.perf_counter() - started

    snapshot.release()  # as Copilot does after its first publish: from now on every change is a new snapshot
    # A full VirtualService response: a join of the resources encoded once, when the store took them.
    view = snapshot.snapshot().resources(VIRTUAL_SERVICE.collection)
    started = time.perf_counter()
    encoded = encode_response(view, VIRTUAL_SERVICE.collection, "1")
    encode = time.perf_counter() - started

    # One event = an instance of one process goes RUNNING on a new port, decoded as BBS sends it.
    timings = []
    for n in range(events):
        guid = f"pg-{(n * 7919) % routes}"
        change = bbs_pb2.ActualLRPInstanceChangedEvent(
            actual_lrp_key=bbs_pb2.ActualLRPKey(process_guid=guid, index=0, domain="cf-apps"),
            actual_lrp_instance_key=bbs_pb2.ActualLRPInstanceKey(instance_guid=f"{guid}-0", cell_id="cell"),
            after=bbs_pb2.ActualLRPInfo(
                state="RUNNING",
                actual_lrp_net_info=bbs_pb2.ActualLRPNetInfo(
                    address="10.9.9.9", ports=[bbs_pb2.PortMapping(container_port=8080, host_port=40000 + n % 20000)]
                ),
            ),
        )
        payload = change.SerializeToString()
        t0 = time.perf_counter()
        event = Event(str(n), "actual_lrp_instance_changed", bbs_pb2.ActualLRPInstanceChangedEvent.FromString(payload))
        apply_event(views.bbs, event)
        publisher.publish()
        timings.append(time.perf_counter() - t0)
    timings.sort()
    return {
        "routes": routes,
        "instances": routes * 2,
        "full_rebuild_s": round(rebuild, 3),
        "virtualservice_response_mb": round(len(encoded) / 1e6, 1),
        "virtualservice_response_encode_s": round(encode, 3),
        "event_apply_p50_ms": round(statistics.median(timings) * 1000, 3),
        "event_apply_p99_ms": round(timings[int(len(timings) * 0.99) - 1] * 1000, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.events)))
        return
    print(
        f"{'routes':>8} {'instances':>9} {'rebuild s':>9} {'event p50 ms':>12} {'event p99 ms':>12} "
        f"{'VS resp MB':>10} {'encode s':>8} {'peak RSS MiB':>12}"
    )
    for routes in args.routes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(routes), "--events", str(args.events)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out)
        print(
            f"{r['routes']:>8} {r['instances']:>9} {r['full_rebuild_s']:>9} {r['event_apply_p50_ms']:>12} "
            f"{r['event_apply_p99_ms']:>12} {r['virtualservice_response_mb']:>10} {r['virtualservice_response_encode_s']:>8} "
            f"{r['peak_rss_mib']:>12}"
        )


if __name__ == "__main__":
    main()
