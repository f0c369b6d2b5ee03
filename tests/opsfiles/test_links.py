"""Every link a job consumes in the interpolated manifest has a provider.

Our jobs: their specs in this repository say what they consume and provide; BOSH links implicitly by
type, so each required link type must have exactly one provider. Upstream jobs: the manifest's
explicit `consumes: {x: {from: y}}` must name a provider alias that exists, and no job that is known
to consume a link only the removed jobs provided may remain. Limits: upstream jobs' implicit links
are not read from their specs (their releases are not here); the table below lists the ones the
removed jobs provided (nats / nats-tls from nats, routing_api from routing-api) and their known
consumers in cf-deployment's releases, from routing-release, diego-release and cf-networking-release.
"""

from __future__ import annotations

import yaml
from opsfile_helpers import REMOVED_GROUPS, REPO, jobs

OUR_RELEASE = "istio-routing"
REMOVED_LINK_TYPES = {"nats", "nats-tls", "routing_api", "tcp_router"}
KNOWN_CONSUMERS_OF_REMOVED_LINKS = {"gorouter", "tcp_router", "route_registrar", "route_emitter", "service-discovery-controller",
                                    "routing-api", "nats-tls", "nats"}


def _spec(job_name: str) -> dict:
    return yaml.safe_load((REPO / "jobs" / job_name / "spec").read_text())


def _providers_by_type(manifest: dict) -> dict[str, list[str]]:
    providers: dict[str, list[str]] = {}
    for where, item in jobs(manifest):
        if item.get("release") != OUR_RELEASE:
            continue
        for provided in _spec(item["name"]).get("provides") or []:
            providers.setdefault(provided["type"], []).append(f"{where}/{item['name']}")
    return providers


def test_our_jobs_links_have_exactly_one_provider(result):
    providers = _providers_by_type(result)
    consumers = 0
    for where, item in jobs(result):
        if item.get("release") != OUR_RELEASE:
            continue
        for consumed in _spec(item["name"]).get("consumes") or []:
            found = providers.get(consumed["type"], [])
            if consumed.get("optional") and not found:
                continue
            consumers += 1
            assert len(found) == 1, f"{where}/{item['name']} consumes {consumed['type']}: providers {found}"
    assert consumers >= 1 + 1 + 6  # pilot-discovery, istio-router, the six registrar groups


def test_the_registrars_find_copilot_through_the_link(result):
    """istio-route-registrar's copilot link is optional in its spec but the manifest relies on it."""
    providers = _providers_by_type(result)
    registrars = [w for w, item in jobs(result) if item["name"] == "istio-route-registrar"]
    assert len(registrars) == 7  # the six platform groups' and istio-control's (router groups)
    assert len(providers["copilot"]) == 1
    for where, item in jobs(result):
        if item["name"] == "istio-route-registrar":
            assert "addresses" not in item["properties"].get("copilot", {}), where


def test_explicit_consumes_name_existing_providers(result):
    aliases = set()
    for _, item in jobs(result):
        for name, provided in (item.get("provides") or {}).items():
            aliases.add(provided.get("as", name) if isinstance(provided, dict) else name)
    for where, item in jobs(result):
        for name, consumed in (item.get("consumes") or {}).items():
            if isinstance(consumed, dict) and "from" in consumed and "deployment" not in consumed:
                assert consumed["from"] in aliases, f"{where}/{item['name']} consumes {name} from {consumed['from']}: no provider"


def test_no_job_that_needs_a_removed_link_remains(result, base):
    removed_aliases = {alias for _, item in jobs(base) if item["name"] in {"nats-tls", "routing-api"}
                       for alias in (item.get("provides") or {})}
    assert "nats-tls" in removed_aliases  # cf-deployment shares it explicitly
    for where, item in jobs(result):
        assert item["name"] not in KNOWN_CONSUMERS_OF_REMOVED_LINKS, f"{where}/{item['name']} needs a removed link"
        for name, consumed in (item.get("consumes") or {}).items():
            source = consumed.get("from", name) if isinstance(consumed, dict) else name
            assert source not in removed_aliases | REMOVED_LINK_TYPES, f"{where}/{item['name']} consumes {source}"
    assert not REMOVED_GROUPS & {g["name"] for g in result["instance_groups"]}
