"""Helpers for the BOSH release tests: paths, rendering, default properties and links."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bosh_render import link_from_job, render_job
from devtools.peers import REPO

JOBS = REPO / "jobs"
PACKAGES = REPO / "packages"
ALL_JOBS = sorted(p.name for p in JOBS.iterdir() if (p / "spec").is_file())
ALL_PACKAGES = sorted(p.name for p in PACKAGES.iterdir() if (p / "spec").is_file())
CF_STANDIN_NAME = "cf8-cli_0.0.0-standin_linux_x86-64.tgz"


@dataclass
class Pem:
    cert: str
    key: str


@dataclass
class PKI:
    ca: str
    server: Pem  # SANs: localhost, 127.0.0.1, *.example.com
    client: Pem
    ca_path: Path


def copilot_properties(pki: PKI, **overrides) -> dict:
    properties = {"bbs": {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key}}
    return deep_merge(properties, overrides)


def registrar_properties(pki: PKI, **overrides) -> dict:
    """istio-route-registrar with one plain route (cf-deployment's api route shape) and the client TLS."""
    properties = {
        "copilot": {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key},
        "route_registrar": {"routes": [{"name": "api", "port": 9022, "registration_interval": "10s",
                                        "uris": ["api.sys.example.com"]}]},
    }
    return deep_merge(properties, overrides)


def smoke_properties(**overrides) -> dict:
    properties = {
        "cf": {"api_url": "https://api.sys.example.com", "admin_password": "secret", "apps_domain": "istio.example.com"}
    }
    return deep_merge(properties, overrides)


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def copilot_link(properties: dict | None = None, **kwargs) -> dict:
    return link_from_job(JOBS / "copilot", "copilot", properties, **kwargs)


def pilot_link(properties: dict | None = None, addresses: tuple[str, ...] = ("10.0.16.20",)) -> dict:
    return link_from_job(JOBS / "pilot-discovery", "pilot", properties, instances=[{"address": a} for a in addresses])


def render(job: str, properties: dict, out: Path, *, links: dict | None = None, spec: dict | None = None) -> dict[str, Path]:
    return render_job(JOBS / job, properties, links=links, spec_overrides=spec, out_dir=out)


def load_spec(kind: str, name: str) -> dict:
    return yaml.safe_load(((JOBS if kind == "job" else PACKAGES) / name / "spec").read_text())


def make_cf_standin(work: Path) -> Path:
    """A stand-in for the cf CLI release tarball (the real one is not reachable from these machines):
    the same layout (a cf8 executable plus a cf symlink); it prints a version."""
    cf8 = work / "cf8"
    cf8.write_text('#!/bin/sh\necho "cf version 0.0.0-standin"\n')
    cf8.chmod(0o755)
    (work / "cf").symlink_to("cf8")
    tarball = work / CF_STANDIN_NAME
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(cf8, "cf8")
        tar.add(work / "cf", "cf")
    return tarball
