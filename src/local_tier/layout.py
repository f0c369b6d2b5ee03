"""Where the local tier lives on disk: a /var/vcap look-alike under .local/ in the repository."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from devtools import peers


@dataclass(frozen=True)
class Layout:
    """Every path of the local tier, under `root` (ISTIO_ROUTING_LOCAL_ROOT, or .local/ in the repository)."""

    root: Path
    jobs: Path = field(init=False)  # rendered jobs, as /var/vcap/jobs
    packages: Path = field(init=False)  # as /var/vcap/packages
    logs: Path = field(init=False)  # as /var/vcap/sys/log
    run: Path = field(init=False)  # as /var/vcap/sys/run
    vars_store: Path = field(init=False)  # the certificates `bosh int --vars-store` generated
    manifest: Path = field(init=False)  # the interpolated manifest of the running tier (its ports and certificates)
    supervisor_conf: Path = field(init=False)
    supervisor_socket: Path = field(init=False)
    apps: Path = field(init=False)  # what `cf-local push` keeps of each app
    pki: Path = field(init=False)  # certificates copied out of the vars store (the BBS double's, the router CA)

    def __post_init__(self) -> None:
        paths = {
            "jobs": "jobs",
            "packages": "packages",
            "logs": "sys/log",
            "run": "sys/run",
            "vars_store": "vars-store.yml",
            "manifest": "manifest.yml",
            "supervisor_conf": "supervisord.conf",
            "supervisor_socket": "sys/run/supervisor.sock",
            "apps": "apps",
            "pki": "pki",
        }
        for name, relative in paths.items():
            object.__setattr__(self, name, self.root / relative)

    @classmethod
    def default(cls) -> Layout:
        return cls(Path(os.environ.get("ISTIO_ROUTING_LOCAL_ROOT", peers.REPO / ".local")).resolve())
