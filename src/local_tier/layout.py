"""Where the local tier lives on disk: a /var/vcap look-alike under .local/ in the repository."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devtools import peers


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(Path(os.environ.get("ISTIO_ROUTING_LOCAL_ROOT", peers.REPO / ".local")).resolve())

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def logs(self) -> Path:
        return self.root / "sys" / "log"

    @property
    def run(self) -> Path:
        return self.root / "sys" / "run"

    @property
    def vars_store(self) -> Path:
        return self.root / "vars-store.yml"

    @property
    def manifest(self) -> Path:
        """The interpolated manifest of the running tier (with its ports and certificates)."""
        return self.root / "manifest.yml"

    @property
    def supervisor_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    @property
    def pki(self) -> Path:
        return self.root / "pki"
