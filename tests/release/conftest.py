"""Fixtures for the BOSH release tests: a test PKI, the release's blobs, a cf CLI stand-in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from release_helpers import PKI, Pem, make_cf_standin

from devtools.certs import make_ca
from devtools.peers import CACHE, REPO


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    out = tmp_path_factory.mktemp("pki")
    ca = make_ca(out, "release-test-ca")
    server = ca.issue("server", out, dns_names=["localhost", "*.example.com"], ip_addresses=["127.0.0.1"], client=False)
    client = ca.issue("client", out, server=False)
    return PKI(
        ca=ca.cert_path.read_text(),
        server=Pem(server.cert_path.read_text(), server.key_path.read_text()),
        client=Pem(client.cert_path.read_text(), client.key_path.read_text()),
        ca_path=ca.cert_path,
    )


@pytest.fixture(scope="session")
def blobs_dir() -> Path:
    """The release's blobs laid out by blob path (scripts/add-blobs --dir), cached across runs."""
    out = CACHE / "release-blobs"
    result = subprocess.run([str(REPO / "scripts" / "add-blobs"), "--dir", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"scripts/add-blobs failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="session")
def cf_cli_standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cf_standin(tmp_path_factory.mktemp("cf-standin"))
