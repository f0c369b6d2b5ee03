"""Convergence through the real tier as it ships: the release's rendered jobs with their default properties
(manifests/local.yml, as `run-local` runs them: istiod debounce 100 ms, route integrity, the router's client
certificate), app instances behind v58 cell proxies. With N routes in place (2 instances each), each
change is timed from the BBS event (or CC call) to the first response that shows it through Envoy; the
router's cluster count and the RSS of Envoy, istiod and Copilot are printed too, and, per change, what
it cost (counters read before and after each change, averaged over the changes of a kind): istiod's
full pushes (a new PushContext each), its xDS pushes by type, the time it spent building them and its
debounce, the router's CDS/LDS/RDS updates and clusters added or changed, Copilot's responses to
istiod, its time rebuilding hosts and from a snapshot change to each response that carried it. Asserts
nothing.

    .venv/bin/python bench/bench_convergence.py [--routes 100 10000] [--changes 100] [-o OPS_FILE ...]

-o applies ops-files to the local manifest (e.g. to measure one property against its default).

Changes: "scale up" (a third instance of a running app: its cell starts it first, as Diego does, then BBS
reports it RUNNING; until a response comes from it), "new app" (a new route's first instance, until the
first 200), "app removal" (that app's DesiredLRP removed, its instance already gone: its routes,
until the router answers 404), "app's service" (from the same removal until its ServiceEntry and
DestinationRule left, the router's cluster gone: copilot's mcp.service_removal_delay_seconds later, that
push's cost counted here, not in the next change), "new mapping" (Cloud Controller
maps a new route to a running app, green; until green answers on it), "weights" (Cloud Controller maps
green at weight 3 beside blue; until green answers).
--setup-timeout bounds the start (every route in place) at each size; the bench stops if it is over.
--each prints every change as it is timed, with the time (UTC) it started, to line up with the logs.
--keep-logs DIR copies the tier's logs (istiod's says when it read each kind and which pushes followed:
"Received", "Push debounce stable") to DIR/<routes>/ once the tier stopped; PILOT_DISCOVERY=<path> picks
the istiod binary (devtools.peers).
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
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

# What a change cost: (column, where, Prometheus series or Envoy stat). Counters and sums only.
COSTS = (
    ("full", "istiod", "pilot_pushcontext_init_seconds_count"),
    ("init s", "istiod", "pilot_pushcontext_init_seconds_sum"),
    ("cds", "istiod", 'pilot_xds_pushes{type="cds"}'),
    ("eds", "istiod", 'pilot_xds_pushes{type="eds"}'),
    ("lds", "istiod", 'pilot_xds_pushes{type="lds"}'),
    ("rds", "istiod", 'pilot_xds_pushes{type="rds"}'),
    ("push s", "istiod", "pilot_xds_push_time_sum"),
    ("debounce s", "istiod", "pilot_debounce_time_sum"),
    ("E cds", "envoy", "cluster_manager.cds.update_success"),
    ("E +cl", "envoy", "cluster_manager.cluster_added"),
    ("E ~cl", "envoy", "cluster_manager.cluster_modified"),
    ("E lds", "envoy", "listener_manager.lds.update_success"),
    ("E rds", "envoy", "rds_updates"),
    ("mcp", "copilot", "copilot_pushes_total"),
    ("cp build s", "copilot", "copilot_publish_seconds_sum"),
    ("cp send s", "copilot", "copilot_push_latency_seconds_sum"),
    ("inbound", "istiod", "pilot_inbound_updates"),
)


# Counters that move while a change is on its way: istiod taking in a change (before its debounce),
# starting a full push (a new PushContext, counted once built), pushing each type; the router applying.
QUIET = ("inbound", "full", "cds", "eds", "lds", "rds", "E cds", "E rds")


def quiet_window(now: dict[str, float]) -> float:
    """How long nothing must move for a change to be over: a second, and twice the mean time istiod
    took to build a PushContext (during which no counter moves: 0.3 s at 10,000 routes, several
    seconds at 100,000, where a second of quiet let the next change start behind a full push)."""
    return max(1.0, 0.5 + 2 * now["init s"] / max(1.0, now["full"]))


def prometheus_sums(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, by series (labels kept), plus each metric name summed
    over its labels, and each `name{one label}` summed over the others."""
    values: dict[str, float] = {}
    for line in requests.get(url, timeout=ADMIN_TIMEOUT).text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        number = float(value)
        values[name] = values.get(name, 0.0) + number
        for label in labels.rstrip("}").split(","):
            if label:
                key = f"{name}{{{label}}}"
                values[key] = values.get(key, 0.0) + number
    return values


# How long one change, or one step of a change's set-up, may take. At 100,000 routes a new route took
# three full pushes of 15-30 s each and the router's 55.6 MB of routes, and 120 s ended a run there.
STEP_TIMEOUT = 300

# The router's admin API runs on its main thread, which answers nothing while it applies a large push
# (at 100,000 routes, tens of seconds): a slow answer is the router busy, not a failure.
ADMIN_TIMEOUT = 300


def envoy_stats(admin_port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{admin_port}/stats?usedonly", timeout=ADMIN_TIMEOUT).text
    values: dict[str, float] = {"rds_updates": 0.0}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            values[name] = float(value)
            if ".rds." in name and name.endswith(".update_success"):
                values["rds_updates"] += float(value)
    return values


def fewer_clusters(tier: Tier, than: int) -> bool:
    """Whether the router holds fewer than `than` clusters, asked 10 times a second at most (its admin API
    shares the main thread with applying xDS)."""
    time.sleep(0.1)
    return tier.envoy.cluster_count(timeout=ADMIN_TIMEOUT) < than


def costs(tier: Tier) -> dict[str, float]:
    pages = {
        "istiod": prometheus_sums(f"http://127.0.0.1:{tier.ports['istiod_monitoring_port']}/metrics"),
        "copilot": prometheus_sums(f"http://127.0.0.1:{tier.ports['copilot_health_port']}/metrics"),
        "envoy": envoy_stats(tier.ports["router_admin_port"]),
    }
    return {column: pages[where].get(series, 0.0) for column, where, series in COSTS}


def footprint(tier: Tier) -> str:
    programs = {"router Envoy": "istio-router-envoy", "istiod": "pilot-discovery", "Copilot": "copilot"}
    sizes = ", ".join(f"{name} {rss_mib(tier.pid(program)):.0f} MiB" for name, program in programs.items())
    clusters = tier.envoy.cluster_count(timeout=ADMIN_TIMEOUT)  # the router may be busy applying
    return f"router clusters {clusters}; RSS: {sizes}"


def run(
    routes: int, changes: int, ops_files: list[Path], setup_timeout: float, each: bool, keep_logs: Path | None = None
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
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

    timings: dict[str, list[float]] = {
        "scale up": [], "new app": [], "app removal": [], "app's service": [], "new mapping": [], "weights": []
    }
    spent: dict[str, dict[str, float]] = {kind: dict.fromkeys(costs_columns(), 0.0) for kind in timings}
    with tempfile.TemporaryDirectory() as workdir:
        print(f"  {routes} routes: the tier in {workdir} (logs there)", flush=True)
        started = time.monotonic()
        tier = start_tier(
            Path(workdir), ops_files=ops_files, test_certificates=False, preload=preload, ready_timeout=setup_timeout
        )
        instances: list[CellInstance] = []
        try:
            last = routes - 1
            tier.bbs.desire_lrp(f"bg-{last}", http_routes=[{"hostnames": [f"bg-{last}.apps.example.com"], "port": 8080}])
            for index in range(INSTANCES_PER_ROUTE):
                instances.append(tier.start_instance(f"bg-{last}", index, f"bg-{last}-{index}"))
            left = max(1.0, setup_timeout - (time.monotonic() - started))
            wait_until(lambda: tier.get(f"bg-{last}.apps.example.com").status_code == 200, timeout=left, message="routes")
            print(f"  {routes} routes x {INSTANCES_PER_ROUTE} instances in place {time.monotonic() - started:.1f}s after start")
            print(f"  {footprint(tier)}", flush=True)
            session = requests.Session()

            def measure(kind: str, start, until, since: float | None = None) -> float:
                """Times one change into timings[kind]: from `start()` (or `since`, a perf_counter of an
                earlier start) until `until()`; what it cost (until istiod and the router were quiet again)
                into spent[kind]. It starts once the previous change (and the set-up of this one) settled,
                or at once if it follows an earlier start (whose measure settled). Returns when it started."""
                before = settled(costs(tier)) if since is None else costs(tier)
                wall = time.time()
                began = time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"
                t0 = time.perf_counter()
                start()
                while time.perf_counter() - t0 < STEP_TIMEOUT and not until():
                    pass
                timings[kind].append(time.perf_counter() - (t0 if since is None else since))
                after = settled(before)
                for column in spent[kind]:
                    spent[kind][column] += after[column] - before[column]
                if each:
                    cost = ", ".join(f"{c} {after[c] - before[c]:g}" for c in ("full", "cds", "eds", "rds", "E rds"))
                    took = f"{timings[kind][-1] * 1000:.0f} ms"
                    print(f"    {kind} {len(timings[kind])}, from {began}: {took} ({cost})", flush=True)
                return t0

            def answered(host: str, done):
                """`until` for measure: the router's answer for `host` is what `done` looks for."""
                return lambda: done(session.get(tier.router_url, headers={"Host": host}, timeout=10))

            def settled(before: dict[str, float]) -> dict[str, float]:
                """The counters once istiod and the router were quiet for `quiet_window()` (later pushes
                of the change count too); at most 300 s."""
                now = costs(tier)
                deadline = time.monotonic() + 300
                quiet_since = time.monotonic()
                while time.monotonic() < deadline:
                    time.sleep(0.25)
                    later = costs(tier)
                    if any(later[c] != now[c] for c in QUIET):
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= quiet_window(later):
                        return later
                    now = later
                return now

            stub = tier.cc_stub()
            for name in ("blue", "green"):
                tier.bbs.desire_lrp(f"{name}-v1", http_routes=[{"hostnames": [f"{name}.apps.example.com"], "port": 8080}])
                instances.append(tier.start_instance(f"{name}-v1", 0, f"{name}-v1-0"))
                association = api.CapiDiegoProcessAssociation(capi_process_guid=name, diego_process_guids=[f"{name}-v1"])
                stub.UpsertCapiDiegoProcessAssociation(
                    api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
                )
            # The first change starts once blue and green answer (and, in measure, their pushes are over:
            # they were counted in the first scale up, a full push or two).
            for name in ("blue", "green"):
                answers = lambda h=name: tier.get(f"{h}.apps.example.com").text.strip() == f"{h}-v1-0"  # noqa: E731
                wait_until(answers, timeout=STEP_TIMEOUT, message=name)

            def map_route(route_guid: str, capi: str, weight: int) -> None:
                mapping = api.RouteMapping(capi_process_guid=capi, route_guid=route_guid, route_weight=weight)
                stub.MapRoute(api.MapRouteRequest(route_mapping=mapping))

            for n in range(changes):
                # Scale up the last route (its instances are real): a third instance.
                guid = f"scaled-{n}"
                scaled = tier.cell.start_instance(guid)
                measure(
                    "scale up",
                    lambda s=scaled: tier.bbs.start_instance(f"bg-{last}", 2, **s.net_info()),
                    answered(f"bg-{last}.apps.example.com", lambda r, g=guid: r.text.strip() == g),
                )
                tier.bbs.remove_instance(f"bg-{last}", 2)
                scaled.stop()
                host = f"new-{n}.apps.example.com"
                tier.bbs.desire_lrp(f"new-{n}", http_routes=[{"hostnames": [host], "port": 8080}])
                without_backends = lambda h=host: tier.get(h).status_code == 503  # noqa: E731
                wait_until(without_backends, timeout=STEP_TIMEOUT, message="the route without backends")
                fresh = tier.cell.start_instance(f"new-{n}-0")
                measure(
                    "new app",
                    lambda n=n, f=fresh: tier.bbs.start_instance(f"new-{n}", 0, **f.net_info()),
                    answered(host, lambda r: r.status_code == 200),
                )
                tier.bbs.remove_instance(f"new-{n}", 0)
                fresh.stop()
                clusters = tier.envoy.cluster_count(timeout=ADMIN_TIMEOUT)
                removed = measure(
                    "app removal",
                    lambda n=n: tier.bbs.remove_desired_lrp(f"new-{n}"),
                    answered(host, lambda r: r.status_code == 404),
                )
                # Its service (the router's cluster) goes mcp.service_removal_delay_seconds later: timed
                # from the same removal, its push counted here, not in the next change.
                measure("app's service", lambda: None, lambda c=clusters: fewer_clusters(tier, c), since=removed)
                host = f"mapped-{n}.apps.example.com"
                stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"m-{n}", host=host)))
                mapped = lambda n=n: map_route(f"m-{n}", "green", 1)  # noqa: E731
                measure("new mapping", mapped, answered(host, lambda r: r.text.strip() == "green-v1-0"))
                host = f"weighted-{n}.apps.example.com"
                stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"w-{n}", host=host)))
                map_route(f"w-{n}", "blue", 1)
                wait_until(lambda h=host: tier.get(h).text.strip() == "blue-v1-0", timeout=STEP_TIMEOUT, message="blue")
                green = answered(host, lambda r: r.text.strip() == "green-v1-0")
                measure("weights", lambda n=n: map_route(f"w-{n}", "green", 3), green)
            print(f"  after the changes: {footprint(tier)}", flush=True)
            return timings, spent
        finally:
            for instance in instances:
                instance.stop()
            tier.stop()
            if keep_logs is not None:
                shutil.copytree(tier.layout.logs, keep_logs / str(routes), dirs_exist_ok=True)
                print(f"  logs kept in {keep_logs / str(routes)}", flush=True)


def main() -> None:
    # Stopped with SIGTERM (a background job ignores SIGINT), the tier is still stopped (finally clauses).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--each", action="store_true", help="print every change: its time and what it cost")
    parser.add_argument("--setup-timeout", type=float, default=1800, help="seconds for the tier and every route to be in place")
    parser.add_argument("-o", "--ops-file", type=Path, action="append", default=[], help="ops-file over manifests/local.yml")
    parser.add_argument("--keep-logs", type=Path, help="copy the tier's logs to DIR/<routes>/ once it stopped")
    args = parser.parse_args()
    ops = "".join(f" + {path}" for path in args.ops_file)
    print(f"the tier: manifests/local.yml{ops}, every other property at its job default", flush=True)
    for routes in args.routes:
        results, spent = run(
            routes, args.changes, [path.resolve() for path in args.ops_file], args.setup_timeout, args.each, args.keep_logs
        )
        print(f"{'routes':>8} {'change':>13} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}", flush=True)
        for kind, values in results.items():
            values.sort()
            p99 = values[math.ceil(len(values) * 0.99) - 1]  # nearest rank: the largest of fewer than 100
            print(
                f"{routes:>8} {kind:>13} {len(values):>6} {statistics.median(values) * 1000:>8.1f} {p99 * 1000:>8.1f} "
                f"{values[-1] * 1000:>8.1f}",
                flush=True,
            )
        print("  per change (mean): istiod full pushes, PushContext init s, xDS pushes by type, push build s,")
        print("  debounce s; the router's (E) CDS updates, clusters added/modified, LDS, RDS updates; Copilot's MCP responses,")
        print("  its time rebuilding hosts and from a snapshot change to each response carrying it (summed over responses)")
        print(f"{'change':>13} " + " ".join(f"{c:>10}" for c in costs_columns()), flush=True)
        for kind, columns in spent.items():
            count = max(1, len(results[kind]))
            print(f"{kind:>13} " + " ".join(f"{v / count:>10.2f}" for v in columns.values()), flush=True)


def costs_columns() -> list[str]:
    return [column for column, _, _ in COSTS]


if __name__ == "__main__":
    main()
