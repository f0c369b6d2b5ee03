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

from bosh_render import deep_merge, link_from_job, render_job
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
    """One bpm process of a rendered job (of the local instance group, or of another router: `group`,
    whose /var/vcap is `root`)."""

    job: str
    name: str
    argv: list[str]
    env: dict[str, str]
    pre_start: str | None
    group: str = ""
    root: Path | None = None


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


def render(layout: Layout, manifest: dict, routers: dict[str, dict] | None = None) -> list[Process]:
    """Renders every job of the instance group into <root>/jobs/<job>, paths rewritten to the local root.

    `routers`: more routers (instance group name -> properties merged over the group's istio-router
    job's, e.g. another router_shard, node_ip, admin and health ports), each an istio-router job of its
    own instance group with its own /var/vcap (<root>/routers/<name>), as a BOSH VM of that group."""
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
        processes += _render_job(layout.root, job, properties, consumed[job], INSTANCE)
    for name, overrides in (routers or {}).items():
        root = router_root(layout, name)
        (root / "packages").parent.mkdir(parents=True, exist_ok=True)
        if not (root / "packages").exists():
            (root / "packages").symlink_to(layout.packages)
        instance = {**INSTANCE, "name": name, "id": f"{name}-0"}
        properties = deep_merge(jobs["istio-router"], overrides)
        processes += _render_job(
            root, "istio-router", properties, consumed["istio-router"], instance, group=name, shared={CERTS: layout.root}
        )
    return processes


# Copilot's Gateways and routes name the routers' certificate files by one path (gateway.certificate_dir,
# instance_identity_ca_file, upstream_ca_file), the same on every BOSH VM. On one machine that path is the
# local router's: other routers (same certificates) serve those files to their Envoy as it does.
CERTS = "/var/vcap/jobs/istio-router/config/certs"


def router_root(layout: Layout, name: str) -> Path:
    """The /var/vcap of another router (render's `routers`)."""
    return layout.root / "routers" / name


def _render_job(
    root: Path, job: str, properties: dict, links: dict, instance: dict, group: str = "", shared: dict[str, Path] | None = None
) -> list[Process]:
    """Renders one job under `root` (its /var/vcap); `shared`: /var/vcap paths that are another root's."""
    rendered = render_job(
        JOBS / job, properties, spec_overrides={**instance, "job": {"name": job}}, links=links, out_dir=root / "jobs" / job
    )
    for destination, path in rendered.items():
        text = path.read_text()
        for prefix, other in (shared or {}).items():
            text = text.replace(prefix, str(other / prefix.removeprefix("/var/vcap/")))
        path.write_text(text.replace("/var/vcap/", f"{root}{os.sep}"))
        if destination.startswith("bin/"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    bpm = yaml.safe_load(rendered["config/bpm.yml"].read_text())
    return [
        Process(
            job,
            process["name"],
            [process["executable"], *process.get("args", [])],
            {str(k): str(v) for k, v in (process.get("env") or {}).items()},
            (process.get("hooks") or {}).get("pre_start"),
            group,
            root if group else None,
        )
        for process in bpm["processes"]
    ]


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

