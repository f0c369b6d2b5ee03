"""The release ships the istiod this repository builds: the pilot-discovery blob is the binary
scripts/build-go-tools made (with its changes, e.g. the required client certificate on the secure xDS
port), not an older build that happens to carry the same Istio version in its name."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from devtools import peers


def _version_label() -> str:
    script = f'source "{peers.REPO / "scripts" / "versions.sh"}" && printf %s "$ISTIO_VERSION_LABEL"'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout


def test_the_istiod_blob_is_the_built_binary(blobs_dir: Path):
    blob = blobs_dir / "pilot-discovery" / f"pilot-discovery-{_version_label()}-linux-amd64"
    assert blob.is_file()
    assert filecmp.cmp(blob, peers.pilot_discovery().resolve(), shallow=False), (
        f"{blob} is not {peers.pilot_discovery().resolve()}: scripts/add-blobs kept a stale istiod")
