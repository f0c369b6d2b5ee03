"""Renders the local manifest's jobs with the release's template renderer, and lays out the packages
their bpm processes expect, all under the local root."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bosh_render import link_from_job, render_job
from devtools import peers
from local_tier.layout import Layout

MANIFEST = peers.REPO / "manifests" / "local.yml"
PORTS = peers.REPO / "manifests" / "local-ports.yml"
JOBS = peers.REPO / "jobs"
INSTANCE = {
    "ip": "127.0.0.1",
    "address": "127.0.0.1",
    "name": "local",
    "index": 0,
    "id": "local-0",
    "az": "z1",
    "deployment": "istio-routing-local",
    "bootstrap": True,
}


@dataclass(frozen=True)
class Process:
    """One bpm process of a rendered job."""

    job: str
    name: str
    argv: list[str]
    env: dict[str, str]
    pre_start: str | None


def interpolate(layout: Layout, overrides: dict[str, str], ops_files: Sequence[Path] = ()) -> dict:
    """`bosh int` of the local manifest (with `ops_files` applied in order): the real bosh CLI
    generates and keeps the certificates."""
    argv = [str(peers.bosh()), "int", str(MANIFEST), "--vars-store", str(layout.vars_store), "-l", str(PORTS), "--var-errs"]
    for ops_file in ops_files:
        argv += ["-o", str(ops_file)]
    for name, value in overrides.items():
        argv += ["-v", f"{name}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bosh int {MANIFEST.name} failed:\n{result.stderr or result.stdout}")
    layout.manifest.write_text(result.stdout)
    return yaml.safe_load(result.stdout)


def variables(layout: Layout) -> dict:
    return yaml.safe_load(layout.vars_store.read_text()) or {}


def render(layout: Layout, manifest: dict) -> list[Process]:
    """Renders every job of the instance group into <root>/jobs/<job>, paths rewritten to the local root."""
    group = next(g for g in manifest["instance_groups"] if g.get("lifecycle") != "errand")
    jobs = {job["name"]: job.get("properties") or {} for job in group["jobs"]}
    instance = [{"address": "127.0.0.1", "index": 0, "az": "z1", "id": "local-0", "name": "local", "bootstrap": True}]
    links = {
        "copilot": link_from_job(JOBS / "copilot", "copilot", jobs["copilot"], instances=instance, address="127.0.0.1"),
        "pilot": link_from_job(
            JOBS / "pilot-discovery", "pilot", jobs["pilot-discovery"], instances=instance, address="127.0.0.1"
        ),
    }
    consumed = {
        "copilot": {},
        "pilot-discovery": {"copilot": links["copilot"]},
        "istio-router": {"pilot": links["pilot"], "copilot": links["copilot"]},
        "istio-route-registrar": {"copilot": links["copilot"]},
    }
    processes: list[Process] = []
    for job, properties in jobs.items():
        out = layout.jobs / job
        rendered = render_job(
            JOBS / job, properties, spec_overrides={**INSTANCE, "job": {"name": job}}, links=consumed[job], out_dir=out
        )
        for destination, path in rendered.items():
            path.write_text(_localize(path.read_text(), layout))
            if destination.startswith("bin/"):
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
        bpm = yaml.safe_load(rendered["config/bpm.yml"].read_text())
        for process in bpm["processes"]:
            processes.append(
                Process(
                    job,
                    process["name"],
                    [process["executable"], *process.get("args", [])],
                    {str(k): str(v) for k, v in (process.get("env") or {}).items()},
                    (process.get("hooks") or {}).get("pre_start"),
                )
            )
    return processes


def render_errand(layout: Layout, manifest: dict) -> Path:
    """Renders the smoke-tests errand of the local manifest; returns its bin/run."""
    group = next(g for g in manifest["instance_groups"] if g.get("lifecycle") == "errand")
    job = group["jobs"][0]
    out = layout.jobs / job["name"]
    rendered = render_job(
        JOBS / job["name"],
        job.get("properties") or {},
        spec_overrides={**INSTANCE, "name": group["name"], "job": {"name": job["name"]}},
        out_dir=out,
    )
    run = rendered["bin/run"]
    run.chmod(0o755)
    return run


def lay_out_packages(layout: Layout) -> None:
    """<root>/packages/<name>/bin/<program>: the programs the jobs' bpm.yml names, from this machine."""
    python = sys.executable
    src = peers.REPO / "src"
    wrappers = {
        "copilot/bin/copilot": f'exec env PYTHONPATH="{src}" "{python}" -m copilot.main "$@"',
        "router-sds/bin/router-sds": f'exec env PYTHONPATH="{src}" "{python}" -m router_sds "$@"',
        "router-sds/bin/route-services": f'exec env PYTHONPATH="{src}" "{python}" -m route_services "$@"',
        "envoy/bin/envoy": f'exec "{peers.envoy()}" "$@"',
        "istio-route-registrar/bin/istio-route-registrar": f'exec env PYTHONPATH="{src}" "{python}" -m route_registrar "$@"',
        "pilot-discovery/bin/pilot-discovery": f'exec "{peers.pilot_discovery()}" "$@"',
        # The errand's cf CLI: a stand-in mapping the commands it uses onto the local tier.
        "cf-cli/bin/cf": f'exec env PYTHONPATH="{src}" ISTIO_ROUTING_LOCAL_ROOT="{layout.root}" '
        f'"{python}" -m local_tier.cf_shim "$@"',
    }
    for relative, command in wrappers.items():
        path = layout.packages / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{command}\n")
        path.chmod(0o755)
    app = layout.packages / "istio-smoke-tests" / "app"
    if not app.exists():
        app.parent.mkdir(parents=True, exist_ok=True)
        app.symlink_to(peers.REPO / "src" / "istio-smoke-tests" / "app")


def _localize(text: str, layout: Layout) -> str:
    return text.replace("/var/vcap/", f"{layout.root}{os.sep}")
