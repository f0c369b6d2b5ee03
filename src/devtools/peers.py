"""Finds the real peers the project runs (istiod, Envoy, bosh, ruby) where ./scripts/setup put them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ISTIO_ROUTING_CACHE", Path.home() / ".cache" / "istio-routing"))


class MissingPeer(RuntimeError):
    """A program the tier needs is not installed; the message says how to get it."""


def _find(name: str, candidates: list[Path]) -> Path:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise MissingPeer(f"{name} not found (looked in {', '.join(str(c) for c in candidates)}); run ./scripts/setup")


def pilot_discovery() -> Path:
    return _find("pilot-discovery", [Path(os.environ.get("PILOT_DISCOVERY", "/nonexistent")), CACHE / "bin" / "pilot-discovery"])


def envoy() -> Path:
    venv_bin = Path(sys.executable).parent
    return _find("envoy", [Path(os.environ.get("ENVOY", "/nonexistent")), venv_bin / "envoy", REPO / ".venv" / "bin" / "envoy"])


def bosh() -> Path:
    return _find("bosh", [Path(os.environ.get("BOSH_CLI", "/nonexistent")), CACHE / "bin" / "bosh"])
