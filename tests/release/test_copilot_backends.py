"""The copilot job's backends.allowed_internal_networks: rendered into Copilot's config (default: none,
so loopback and link-local backends are refused), checked at render time, and set by the local tier,
whose cells and app containers all live on 127.0.0.0/8."""

from __future__ import annotations

import pytest
import yaml
from release_helpers import copilot_properties, render

from bosh_render import RenderError
from copilot.config import load
from devtools.peers import REPO


def rendered_config(pki, tmp_path, **overrides) -> dict:
    rendered = render("copilot", copilot_properties(pki, **overrides), tmp_path)
    return yaml.safe_load(rendered["config/copilot.yml"].read_text())


def test_no_internal_network_is_allowed_by_default(pki, tmp_path) -> None:
    assert rendered_config(pki, tmp_path)["backends"] == {"allowed_internal_networks": []}


def test_the_allow_list_reaches_copilot(pki, tmp_path) -> None:
    rendered = render("copilot", copilot_properties(pki, backends={"allowed_internal_networks": ["127.0.0.0/8"]}), tmp_path)
    path = rendered["config/copilot.yml"]
    path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path)))
    assert load(path).backends.allowed_internal_networks == ("127.0.0.0/8",)


@pytest.mark.parametrize("value", ["127.0.0.0/8", [""], [8]])
def test_an_allow_list_that_is_not_a_list_of_cidrs_fails_the_render(pki, tmp_path, value) -> None:
    with pytest.raises(RenderError, match="backends.allowed_internal_networks: must be a list of CIDRs"):
        rendered_config(pki, tmp_path, backends={"allowed_internal_networks": value})


def test_the_local_tier_names_loopback_explicitly() -> None:
    manifest = yaml.safe_load((REPO / "manifests" / "local.yml").read_text())
    [group] = [g for g in manifest["instance_groups"] if any(j["name"] == "copilot" for j in g["jobs"])]
    [copilot] = [j for j in group["jobs"] if j["name"] == "copilot"]
    assert copilot["properties"]["backends"] == {"allowed_internal_networks": ["127.0.0.0/8"]}
