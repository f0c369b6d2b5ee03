"""Sample app instances for the local tier: processes on loopback that the push command starts, and
their record in <root>/apps/state.json (so stop leaves none behind)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from devtools import peers
from local_tier.layout import Layout


def load(layout: Layout) -> dict:
    state = layout.apps / "state.json"
    return json.loads(state.read_text()) if state.is_file() else {}


def save(layout: Layout, state: dict) -> None:
    layout.apps.mkdir(parents=True, exist_ok=True)
    (layout.apps / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))


def start_instance(layout: Layout, instance_guid: str, static_dir: str | None = None) -> tuple[int, int]:
    """Starts one sample app process; returns (pid, port)."""
    layout.apps.mkdir(parents=True, exist_ok=True)
    port_file = layout.apps / f"{instance_guid}.port"
    port_file.unlink(missing_ok=True)
    log = (layout.apps / f"{instance_guid}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.apps", "--guid", instance_guid, "--port-file", str(port_file)]
        + (["--static-dir", static_dir] if static_dir else []),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(peers.REPO / "src")},
    )
    log.close()
    deadline = time.monotonic() + 15
    while not port_file.is_file() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the sample app {instance_guid} did not start (see {layout.apps / (instance_guid + '.log')})")
        time.sleep(0.05)
    return process.pid, int(port_file.read_text())


def stop_pid(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop_all(layout: Layout) -> None:
    state = load(layout)
    for app in state.values():
        for instance in app["instances"]:
            stop_pid(instance["pid"])
    if state:
        save(layout, {})
