"""BulkSync at scale: one BulkSyncRequest of N routes, N route mappings and N process associations, cut
into 64 KiB chunks and streamed as Cloud Controller's cc_route_syncer does, through the real
`api.CloudControllerCopilot` gRPC server with mutual TLS on loopback. Prints figures; asserts nothing.

Copilot (the server) runs in a subprocess of its own, so its memory figure is its own: peak RSS is the
subprocess's ru_maxrss (the kernel's high-water mark), read before and after the syncs, plus its current
RSS from /proc/self/status. The server wires the views to a real Publisher (the sync's response comes
back only after the Istio objects are rebuilt, as in `copilot`), and by default first loads a matching
BBS slice (one DesiredLRP with 2 instances per CC process) so the CC routes have backends.

With `--released` the store is released after the BBS load, as Copilot's is once istiod is served, and
a watcher keeps the last snapshot as an MCP stream does: a full rebuild then holds the resources it
replaces until its new snapshot is out (without it they are freed as they are replaced).

    .venv/bin/python bench/bench_bulk_sync.py [--routes 100000] [--no-bbs] [--syncs 2] [--released]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import grpc  # noqa: E402

from copilot.istio.kinds import VIRTUAL_SERVICE  # noqa: E402
from copilot.model import HttpRoute, Instance, PortMapping, ProcessRoutes  # noqa: E402
from copilot.protos import cc_copilot_pb2 as api  # noqa: E402
from copilot.protos import cc_copilot_pb2_grpc as api_grpc  # noqa: E402
from copilot.publisher import Publisher  # noqa: E402
from copilot.settings import GatewaySettings  # noqa: E402
from copilot.sources.cc_api import CloudControllerCopilot, serve  # noqa: E402
from copilot.views import Views  # noqa: E402
from copilot.xds.snapshot import Snapshot  # noqa: E402
from copilot.xds.store import Store  # noqa: E402
from devtools.certs import make_ca  # noqa: E402

CHUNK = 64 * 1024


def route_guid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def capi_guid(i: int) -> str:
    return f"{i:08x}-1111-4000-8000-{i:012x}"


def diego_guid(i: int) -> str:
    """Cloud Controller's Diego process guid: `<process guid>-<process version>`, the version a guid too."""
    return f"{capi_guid(i)}-{i:08x}-2222-4000-8000-{i:012x}"


def host(i: int) -> str:
    return f"app-{i:06d}.apps.example.com"


# ---------------------------------------------------------------- server side (subprocess)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_server(pki: Path, routes: int, bbs: bool, released: bool = False) -> None:
    views, snapshot = Views(), Store()
    publisher = Publisher(views, snapshot, GatewaySettings())
    started = time.perf_counter()
    if bbs:
        processes = {diego_guid(i): ProcessRoutes(http=(HttpRoute(host(i), "", 8080),)) for i in range(routes)}
        instances = {
            diego_guid(i): {
                (index, f"{i}-{index}", 0): Instance(
                    diego_guid(i),
                    index,
                    f"{i}-{index}",
                    "RUNNING",
                    True,
                    f"10.{index}.{i // 256 % 256}.{i % 256}",
                    f"10.255.{i // 256 % 256}.{i % 256}",
                    False,
                    (PortMapping(8080, 61000 + index),),
                )
                for index in range(2)
            }
            for i in range(routes)
        }
        views.bbs.replace(processes, instances)
        del processes, instances
        publisher.publish()
    bbs_load = time.perf_counter() - started
    held: list[Snapshot] = []  # the last snapshot released, as an MCP stream holds it
    if released:
        snapshot.watch(lambda latest: held.__setitem__(slice(None), [latest]))
        snapshot.release()
    publishes: list[float] = []

    def on_change() -> None:
        t0 = time.perf_counter()
        publisher.publish()
        publishes.append(time.perf_counter() - t0)

    servicer = CloudControllerCopilot(views.cc, on_change)
    server, port = serve(
        servicer,
        "127.0.0.1:0",
        cert=(pki / "copilot.crt").read_bytes(),
        key=(pki / "copilot.key").read_bytes(),
        client_ca=(pki / "ca.crt").read_bytes(),
    )
    ready = {"port": port, "bbs_load_s": bbs_load, "rss_mib": _rss_mib(), "maxrss_mib": _maxrss_mib()}
    print(json.dumps(ready), flush=True)
    sys.stdin.readline()  # the client says when it is done
    state = views.cc.state()
    report = {
        "rss_mib": _rss_mib(),
        "maxrss_mib": _maxrss_mib(),
        "publish_s": publishes,
        "cc_routes": len(state.routes),
        "cc_mappings": len(state.mappings),
        "cc_associations": len(state.associations),
        "virtual_services": len(snapshot.names(VIRTUAL_SERVICE)),
    }
    server.stop(None)
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------- client side


def build_request(routes: int) -> api.BulkSyncRequest:
    request = api.BulkSyncRequest()
    for i in range(routes):
        request.routes.add(guid=route_guid(i), host=host(i))
        request.route_mappings.add(capi_process_guid=capi_guid(i), route_guid=route_guid(i), route_weight=1)
        request.capi_diego_process_associations.add(capi_process_guid=capi_guid(i), diego_process_guids=[diego_guid(i)])
    return request


def chunks(payload: bytes):
    for start in range(0, max(len(payload), 1), CHUNK):
        yield api.BulkSyncRequestChunk(chunk=payload[start : start + CHUNK])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000, help="routes; as many mappings and associations")
    parser.add_argument("--no-bbs", action="store_true", help="no BBS slice on the server (CC routes without backends)")
    parser.add_argument("--syncs", type=int, default=2, help="identical syncs in a row (CC repeats every 30 s)")
    parser.add_argument("--released", action="store_true", help="the store released, its last snapshot held (istiod served)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.routes, not args.no_bbs, args.released)
        return

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        ca = make_ca(pki / "ca-dir", "ca")
        (pki / "ca.crt").write_bytes(ca.cert_path.read_bytes())
        ca.issue("copilot", pki, ip_addresses=["127.0.0.1"], client=False)
        client = ca.issue("cloud-controller", pki, server=False)
        command = [sys.executable, __file__, "--serve", str(pki), "--routes", str(args.routes)]
        if args.no_bbs:
            command.append("--no-bbs")
        if args.released:
            command.append("--released")
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(child.stdout.readline())

            started = time.perf_counter()
            request = build_request(args.routes)
            payload = request.SerializeToString()
            build = time.perf_counter() - started
            del request

            credentials = grpc.ssl_channel_credentials(
                ca.cert_path.read_bytes(), client.key_path.read_bytes(), client.cert_path.read_bytes()
            )
            walls, received = [], []
            with grpc.secure_channel(f"127.0.0.1:{ready['port']}", credentials) as channel:
                stub = api_grpc.CloudControllerCopilotStub(channel)
                stub.Health(api.HealthRequest(), timeout=30)  # the TLS handshake is not part of the figure
                for _ in range(args.syncs):
                    t0 = time.perf_counter()
                    response = stub.BulkSync(chunks(payload), timeout=600)
                    walls.append(time.perf_counter() - t0)
                    received.append(response.total_bytes_received)

            child.stdin.write("done\n")
            child.stdin.flush()
            report = json.loads(child.stdout.readline())
        finally:
            child.stdin.close()
            child.wait(timeout=60)

    n = args.routes
    print(f"BulkSync over gRPC + mutual TLS on loopback, 64 KiB chunks; Copilot server in a subprocess (pid {child.pid})")
    print(f"  request:            {n} routes, {n} mappings, {n} associations (1 Diego process each)")
    print(f"  server BBS slice:   {'none' if args.no_bbs else f'{n} DesiredLRPs x 2 instances'}")
    print(f"  store:              {'released, its last snapshot held' if args.released else 'not released'}")
    print(f"  payload:            {len(payload):,} bytes ({len(payload) / 2**20:.1f} MiB, {-(-len(payload) // CHUNK)} chunks)")
    print(f"  client build+serialize: {build:.2f} s (not in the wall time)")
    for k, (wall, got) in enumerate(zip(walls, received, strict=True), 1):
        kind = "first (everything changes)" if k == 1 else "repeat (nothing changes)"
        publish = report["publish_s"][k - 1] if k - 1 < len(report["publish_s"]) else float("nan")
        print(
            f"  sync {k} {kind:<27} wall {wall:6.2f} s (client send -> response), "
            f"of which Istio publish {publish:5.2f} s; total_bytes_received {got:,}"
            f"{'' if got == len(payload) else ' (MISMATCH)'}"
        )
    print(
        f"  server slices after: {report['cc_routes']} CC routes, {report['cc_mappings']} mappings, "
        f"{report['cc_associations']} associations, {report['virtual_services']} VirtualServices"
    )
    loaded = "" if args.no_bbs else f" (BBS slice loaded and published in {ready['bbs_load_s']:.1f} s)"
    print(
        f"  server memory (subprocess): before syncs RSS {ready['rss_mib']:.0f} MiB / peak {ready['maxrss_mib']:.0f} MiB"
        f"{loaded}; after syncs RSS {report['rss_mib']:.0f} MiB / peak (ru_maxrss) {report['maxrss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
