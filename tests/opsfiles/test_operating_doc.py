"""docs/operating.md and the README: every `bosh int` command in them runs, and every `bosh deploy` in it has a `bosh int`
equivalent that runs (the deploy's own arguments), with cf-deployment v58 and this repository standing
in for the `cf-deployment/` and `istio-routing/` checkouts the commands name."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from opsfile_helpers import BOSH_LITE, CF, CF_OPS, REPO

from devtools import peers
from devtools.certs import make_ca

DOC = REPO / "docs" / "operating.md"
README = REPO / "README.md"
# Commands that need a director or are exercised elsewhere (tests/release/test_bosh_create_release.py).
DIRECTOR_ONLY = re.compile(r"^cd istio-routing && \./scripts/add-blobs && bosh create-release --force && bosh upload-release$")


def commands() -> list[str]:
    """The commands of the doc's switching sections and of the README's (comment lines left out)."""
    sections = []
    for path, heading in ((DOC, "## Turning the Istio routing tier on and off"), (README, "### Turning the tier on and off")):
        text = path.read_text()
        sections.append(text[text.index(heading):])
    blocks = [b for section in sections for b in re.findall(r"```sh\n(.*?)```", section, re.S)]
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def _local(argv: list[str]) -> list[str]:
    mapping = {"cf-deployment/cf-deployment.yml": str(CF), "cf-deployment/operations/bosh-lite.yml": str(BOSH_LITE)}
    out = []
    for arg in argv:
        arg = mapping.get(arg, arg)
        if arg.startswith("cf-deployment/operations/"):
            arg = str(CF_OPS / arg.removeprefix("cf-deployment/operations/"))
        if arg.startswith("istio-routing/"):
            arg = str(REPO / arg.removeprefix("istio-routing/"))
        out.append(arg)
    return out


def _int_equivalent(command: str) -> str:
    return re.sub(r"^bosh -d cf deploy ", "bosh int ", command)


def test_the_doc_has_the_commands():
    found = commands()
    deploys = [c for c in found if c.startswith("bosh -d cf deploy ")]
    assert len(deploys) >= 5
    for command in found:
        assert command.startswith(("bosh int ", "bosh -d cf deploy ")) or DIRECTOR_ONLY.match(command), command


def test_every_bosh_int_in_the_doc_is_the_equivalent_of_a_deploy_in_it():
    found = commands()
    equivalents = {_int_equivalent(c) for c in found if c.startswith("bosh -d cf deploy ")}
    for command in found:
        if command.startswith("bosh int "):
            assert command in equivalents, f"{command!r} is not the equivalent of a deploy in the doc"


@pytest.mark.parametrize("command", sorted({_int_equivalent(c) for c in commands() if c.startswith("bosh ")}))
def test_command_runs(command, tmp_path: Path):
    argv = _local(shlex.split(command))
    if "router-tls.yml" in argv:  # the operator's certificate, as the doc describes the file
        ca = make_ca(tmp_path, "operator-ca")
        pair = ca.issue("router", tmp_path, dns_names=["*.sys.example.com"], client=False)
        (tmp_path / "router-tls.yml").write_text(
            "istio_router_tls:\n  certificate: |\n" + _indent(pair.cert_path.read_text()) +
            "  private_key: |\n" + _indent(pair.key_path.read_text()))
    result = subprocess.run([str(peers.bosh()), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert "name: cf" in result.stdout


def _indent(pem: str) -> str:
    return "".join(f"    {line}\n" for line in pem.splitlines())
