"""Fixtures shared by the unit tests that talk to the BBS double over real mutual TLS on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from bbs_double.server import BBSDouble
from copilot.sources.bbs_client import TLSFiles
from devtools import waiting
from devtools.certs import CertPair, make_ca


@dataclass
class BBSPKI:
    server: CertPair
    ca_cert: object
    client: TLSFiles  # what Copilot is configured with
    stranger: TLSFiles  # a client certificate from a CA the BBS does not trust
    distrustful: TLSFiles  # a good client certificate, but trusting another CA for the server


@pytest.fixture(scope="session")
def bbs_pki(tmp_path_factory: pytest.TempPathFactory) -> BBSPKI:
    root = tmp_path_factory.mktemp("bbs-pki")
    ca = make_ca(root, "bbs-ca")
    other = make_ca(root / "other", "other-ca")
    server = ca.issue("bbs", root, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False)
    client = ca.issue("copilot", root, server=False)
    stranger = other.issue("stranger", root / "other", server=False)
    return BBSPKI(
        server=server,
        ca_cert=ca.cert_path,
        client=TLSFiles(ca.cert_path, client.cert_path, client.key_path),
        stranger=TLSFiles(ca.cert_path, stranger.cert_path, stranger.key_path),
        distrustful=TLSFiles(other.cert_path, client.cert_path, client.key_path),
    )


@pytest.fixture
def bbs_double(bbs_pki: BBSPKI) -> Iterator[BBSDouble]:
    double = BBSDouble(ca_cert=bbs_pki.client.ca_cert, server_cert=bbs_pki.server.cert_path, server_key=bbs_pki.server.key_path)
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """devtools.waiting.wait_until, as a fixture: `wait_until(predicate, timeout=..., message=...)`."""
    return waiting.wait_until

