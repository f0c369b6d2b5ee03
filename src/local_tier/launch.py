"""The one launcher of the tier on one machine, for `run-local`, the end-to-end tests and the benchmarks:
renders the local manifest (plus ops-files) with the release's jobs, runs their bpm processes under
supervisord, plays Cloud Controller's part of a start (its route syncer's first BulkSync), and waits,
step by step, until every piece is ready."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import requests
import yaml

from copilot.cc_cli import bulk_sync_chunks
from copilot.protos import cc_copilot_pb2 as api
from copilot.protos import cc_copilot_pb2_grpc as api_grpc
from devtools.waiting import poll
from local_tier import render, supervisor
from local_tier.layout import Layout
from local_tier.render import Process

READY_TIMEOUT = 120.0


def default_ports() -> dict[str, int]:
    """The local tier's port variables (manifests/local-ports.yml): every port the tier listens on."""
    return {name: int(port) for name, port in yaml.safe_load(render.PORTS.read_text()).items()}


def ports(layout: Layout) -> dict[str, int]:
    """The ports of the local tier at `layout`: the defaults with the `-v` overrides its start kept."""
    values = default_ports()
    overrides = layout.root / "ports.yml"
    if overrides.is_file():
        values.update({k: int(v) for k, v in (yaml.safe_load(overrides.read_text()) or {}).items()})
    return values


def running(layout: Layout) -> bool:
    """Whether the supervisord of the tier at `layout` answers."""
    return layout.supervisor_conf.is_file() and supervisor.ctl(layout, "pid").returncode == 0


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def prepare(
    layout: Layout, ports: dict[str, int], ops_files: Sequence[Path] = (), routers: dict[str, dict] | None = None
) -> list[Process]:
    """`bosh int` of the manifest with its ports and ops-files, the jobs rendered (with more routers:
    render.render's `routers`), the packages laid out."""
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = render.interpolate(layout, {k: str(v) for k, v in ports.items()}, ops_files)
    render.lay_out_packages(layout)
    return render.render(layout, manifest, routers)


def start(layout: Layout, processes: list[Process], stand_ins: dict[str, list[str]] | None = None) -> list[str]:
    """Starts supervisord with the stand-ins' commands (name -> argv) and the jobs' processes."""
    names = supervisor.write_config(layout, processes, stand_ins)
    result = supervisor.supervisord(layout)
    if result.returncode != 0:
        raise RuntimeError(f"supervisord did not start: {result.stderr or result.stdout}")
    return names


def cc_channel(layout: Layout, ports: dict[str, int]) -> grpc.Channel:
    """A channel to Copilot's Cloud Controller API with Cloud Controller's certificate (from the vars store)."""
    variables = render.variables(layout)
    credentials = grpc.ssl_channel_credentials(
        variables["cc_ca"]["certificate"].encode(),
        variables["cc_client"]["private_key"].encode(),
        variables["cc_client"]["certificate"].encode(),
    )
    return grpc.secure_channel(f"127.0.0.1:{ports['copilot_cc_port']}", credentials)


def cc_stub(layout: Layout, ports: dict[str, int]) -> api_grpc.CloudControllerCopilotStub:
    return api_grpc.CloudControllerCopilotStub(cc_channel(layout, ports))


def cloud_controller_sync(layout: Layout, ports: dict[str, int], request: api.BulkSyncRequest | None = None) -> None:
    """What Cloud Controller's route syncer does after a Copilot starts: a BulkSync (here of no CC
    routes). Copilot holds istiod until it has one (cc.bulk_sync_hold_seconds)."""
    with cc_channel(layout, ports) as channel:
        stub = api_grpc.CloudControllerCopilotStub(channel)
        stub.BulkSync(bulk_sync_chunks(request or api.BulkSyncRequest()), timeout=30)


def _copilot_ready(ports: dict[str, int]) -> bool:
    """Copilot's readiness: its /health answers 200 once it serves istiod (BBS listed, first snapshot
    published), 503 before (and while stopping)."""
    return requests.get(f"http://127.0.0.1:{ports['copilot_health_port']}/health", timeout=1).status_code == 200


def _router_healthy(ports: dict[str, int]) -> bool:
    """The router's load-balancer health check: 200 only once Envoy has its listeners and routes from istiod."""
    return requests.get(f"http://127.0.0.1:{ports['router_health_port']}/health", timeout=1).status_code == 200


def _envoy_live(ports: dict[str, int]) -> bool:
    return requests.get(f"http://127.0.0.1:{ports['router_admin_port']}/ready", timeout=1).text.strip() == "LIVE"


def _synced(layout: Layout, ports: dict[str, int]) -> bool:
    try:
        cloud_controller_sync(layout, ports)
    except grpc.RpcError:
        return False
    return True


def readiness_checks(layout: Layout, ports: dict[str, int]) -> list[tuple[str, Callable[[], object]]]:
    """(what, check) in the order a start makes them true."""
    return [
        ("BBS", lambda: listening(ports["bbs_port"])),
        ("Copilot's Cloud Controller API (first BulkSync)", lambda: _synced(layout, ports)),
        ("Copilot synced with BBS", lambda: _copilot_ready(ports)),
        ("istiod serving xDS", lambda: listening(ports["istiod_grpc_port"])),
        ("Envoy live", lambda: _envoy_live(ports)),
        ("router listening (HTTP and HTTPS)", lambda: all(listening(ports[f"router_{s}_port"]) for s in ("http", "https"))),
        ("router healthy (load balancer check)", lambda: _router_healthy(ports)),
    ]


def wait_ready(
    layout: Layout,
    ports: dict[str, int],
    *,
    quiet: bool = False,
    timeout: float = READY_TIMEOUT,
    first: Sequence[tuple[str, Callable[[], object]]] = (),
) -> bool:
    """Waits for each readiness check in turn (`first`, e.g. the stand-ins, then the tier's), printing
    each step and how long it took."""
    deadline = time.monotonic() + timeout
    for name, check in [*first, *readiness_checks(layout, ports)]:
        if not quiet:
            print(f"  waiting for {name} ...", end="", flush=True)
        started = time.monotonic()
        if not poll(check, max(0.0, deadline - started), interval=0.1, ignoring=(ValueError, OSError)):
            if not quiet:
                print(" timed out", flush=True)
            return False
        if not quiet:
            print(f" ok ({time.monotonic() - started:.1f}s)", flush=True)
    return True


def shutdown(layout: Layout) -> None:
    """Stops supervisord and everything it runs; waits until its process is gone."""
    if not layout.supervisor_conf.is_file():
        return
    pid_file = layout.run / "supervisord.pid"
    pid = int(pid_file.read_text()) if pid_file.is_file() and pid_file.read_text().strip() else None
    supervisor.ctl(layout, "shutdown")
    if pid is None:
        return
    if not poll(lambda: not _exists(pid), 30, interval=0.1):
        os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
