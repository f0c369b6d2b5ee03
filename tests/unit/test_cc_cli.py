"""`copilot-cc` (python -m copilot.cc_cli) against a served CloudControllerCopilot over mutual TLS."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from copilot.model import CCRoute
from copilot.sources.cc_api import CloudControllerCopilot, serve
from copilot.views import Views
from devtools.certs import make_ca


@dataclass
class Served:
    table: Views
    address: str
    ca: Path
    cert: Path
    key: Path
    stranger_cert: Path  # from a CA Copilot does not trust
    stranger_key: Path
    other_ca: Path  # a CA that did not sign Copilot's certificate


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("cc-cli-pki")
    ca = make_ca(root, "cc-ca")
    other = make_ca(root / "other", "other-ca")
    server_pair = ca.issue("copilot", root, ip_addresses=["127.0.0.1"], client=False)
    client = ca.issue("cloud-controller", root, server=False)
    stranger = other.issue("stranger", root / "other", server=False)
    table = Views()
    server, port = serve(
        CloudControllerCopilot(table.cc, lambda: None),
        "127.0.0.1:0",
        cert=server_pair.cert_path.read_bytes(),
        key=server_pair.key_path.read_bytes(),
        client_ca=ca.cert_path.read_bytes(),
    )
    try:
        yield Served(
            table,
            f"127.0.0.1:{port}",
            ca.cert_path,
            client.cert_path,
            client.key_path,
            stranger.cert_path,
            stranger.key_path,
            other.cert_path,
        )
    finally:
        server.stop(None)


def copilot_cc(served: Served, *args: str, cert: Path | None = None, key: Path | None = None, ca: Path | None = None):
    command = [
        sys.executable,
        "-m",
        "copilot.cc_cli",
        "--address",
        served.address,
        "--ca",
        str(ca or served.ca),
        "--cert",
        str(cert or served.cert),
        "--key",
        str(key or served.key),
        "--timeout",
        "10",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def ok(served: Served, *args: str) -> dict:
    result = copilot_cc(served, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_health(served: Served) -> None:
    assert ok(served, "health") == {"healthy": True}


def test_upsert_map_associate_and_list(served: Served) -> None:
    assert ok(served, "upsert-route", "--guid", "r-cli", "--host", "CLI.Example.com", "--path", "/v2") == {}
    assert served.table.cc.state().routes["r-cli"] == CCRoute("r-cli", "cli.example.com", "/v2")
    ok(served, "map-route", "--route-guid", "r-cli", "--capi-process-guid", "c-cli", "--weight", "3")
    assert served.table.cc.state().mappings[("r-cli", "c-cli")] == 3
    ok(
        served,
        "upsert-association",
        "--capi-process-guid",
        "c-cli",
        "--diego-process-guid",
        "c-cli-v2",
        "--diego-process-guid",
        "c-cli-v1",
    )
    assert served.table.cc.state().associations["c-cli"] == ("c-cli-v1", "c-cli-v2")
    assert ok(served, "list-routes")["routes"]["r-cli"] == "cli.example.com"


def test_invalid_request_exits_1_naming_the_field(served: Served) -> None:
    before = served.table.cc.state()
    result = copilot_cc(served, "map-route", "--route-guid", "r", "--capi-process-guid", "c", "--weight", "129")
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "route_mapping.route_weight" in result.stderr
    assert served.table.cc.state() == before


def test_bulk_sync_from_a_json_file(served: Served, tmp_path: Path) -> None:
    request = {
        "routes": [
            {"guid": "b1", "host": "one.example.com"},
            {"guid": "b2", "host": "Two.example.com", "path": "/x"},
            {"guid": "b3", "host": "svc.apps.internal", "internal": True, "vip": "127.128.0.3"},
        ],
        "route_mappings": [{"route_guid": "b1", "capi_process_guid": "bc1", "route_weight": 2}],
        "capi_diego_process_associations": [{"capi_process_guid": "bc1", "diego_process_guids": ["bc1-v1"]}],
    }
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps(request))
    response = ok(served, "bulk-sync", "--file", str(path))
    assert response["total_bytes_received"] > 0
    state = served.table.cc.state()  # replaced: what earlier tests added is gone
    assert state.routes == {
        "b1": CCRoute("b1", "one.example.com"),
        "b2": CCRoute("b2", "two.example.com", "/x"),
        "b3": CCRoute("b3", "svc.apps.internal", "", True, "127.128.0.3"),
    }
    assert state.mappings == {("b1", "bc1"): 2}
    assert state.associations == {"bc1": ("bc1-v1",)}
    assert ok(served, "list-routes") == {"routes": {"b1": "one.example.com", "b2": "two.example.com", "b3": "svc.apps.internal"}}


@pytest.mark.parametrize("who", ["client certificate from another CA", "server certificate from another CA"])
def test_wrong_ca_exits_1_with_a_message(served: Served, who: str) -> None:
    before = served.table.cc.state()
    args = ("upsert-route", "--guid", "x", "--host", "x.example.com")
    if who.startswith("client"):
        result = copilot_cc(served, *args, cert=served.stranger_cert, key=served.stranger_key)
    else:
        result = copilot_cc(served, *args, ca=served.other_ca)
    assert result.returncode == 1
    assert result.stdout == ""
    # gRPC's own handshake log lines may come first; the CLI's message is the last line.
    assert result.stderr.strip().splitlines()[-1].startswith("copilot-cc: UNAVAILABLE: "), result.stderr
    assert "Traceback" not in result.stderr
    assert served.table.cc.state() == before
