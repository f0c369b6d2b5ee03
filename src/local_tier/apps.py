"""Sample app instances for the local tier: started on the tier's cell (local_tier.cell_service, each
behind its v58 container proxy) by the push command, and their record in <root>/apps/state.json."""

from __future__ import annotations

import json

import requests

from local_tier.launch import ports
from local_tier.layout import Layout


def load(layout: Layout) -> dict:
    state = layout.apps / "state.json"
    return json.loads(state.read_text()) if state.is_file() else {}


def save(layout: Layout, state: dict) -> None:
    layout.apps.mkdir(parents=True, exist_ok=True)
    (layout.apps / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))


def _cell_api(layout: Layout) -> str:
    return f"http://127.0.0.1:{ports(layout)['cell_admin_port']}"


def start_on_cell(layout: Layout, instance_guid: str, static_dir: str | None = None) -> dict:
    """Starts one sample app instance on the cell; returns the net info the rep would report."""
    response = requests.post(
        _cell_api(layout) + "/instances", json={"instance_guid": instance_guid, "static_dir": static_dir}, timeout=60
    )
    if response.status_code != 200:
        raise SystemExit(f"error: the cell did not start {instance_guid}: {response.status_code} {response.text}")
    return response.json()


def stop_on_cell(layout: Layout, instance_guid: str) -> None:
    response = requests.delete(f"{_cell_api(layout)}/instances/{instance_guid}", timeout=30)
    if response.status_code not in (200, 404):
        raise SystemExit(f"error: the cell did not stop {instance_guid}: {response.status_code} {response.text}")


def forget_all(layout: Layout) -> None:
    """The cell stops its instances when the tier stops; forget what was pushed."""
    if load(layout):
        save(layout, {})
