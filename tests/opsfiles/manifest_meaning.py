"""What an interpolated cf-deployment + enable-istio-routing.yml manifest must mean, checked on the
manifest itself (not only that keys exist): the removed tier is gone everywhere, every variable is
declared and every declared one used (and every router certificate served), the Istio groups are where
the operator's ops-files put the routers, and haproxy / static IPs / databases are wired as the operator meant."""

from __future__ import annotations

import yaml
from opsfile_helpers import REMOVED_GROUPS, REMOVED_JOBS, REPO, group, jobs, variables_referenced

# Variables cf-deployment and its ops-files take from the operator (never generated).
OPERATOR_VARIABLES = {"system_domain", "router_static_ips", "haproxy_private_ip", "router_tls_pem",
                      "default_router_group_reservable_ports", "istio_router_tls", "default_tcp_router_group_guid"}
# Declared and unused in cf-deployment v58 itself.
UNUSED_IN_CF_DEPLOYMENT = {"log_cache_to_loggregator_agent"}


def _spec(job_name: str) -> dict:
    return yaml.safe_load((REPO / "jobs" / job_name / "spec").read_text())


def orphaned_variables(manifest: dict) -> set[str]:
    """Declared variables nothing refers to (a CA counts as used when a used certificate is signed by it)."""
    used = variables_referenced({k: v for k, v in manifest.items() if k != "variables"})
    variables = {v["name"]: v for v in manifest.get("variables") or []}
    changed = True
    while changed:
        changed = False
        for name in list(used):
            ca = ((variables.get(name) or {}).get("options") or {}).get("ca")
            if ca and ca not in used:
                used.add(ca)
                changed = True
    return set(variables) - used - UNUSED_IN_CF_DEPLOYMENT


def assert_means_the_istio_tier(manifest: dict, cf_ops: tuple[str, ...] = (), before: dict | None = None) -> None:
    """The checks every stage-2 manifest must pass, whatever cf-deployment ops-files came before
    (before: the same manifest without our ops-files, whose own unused variables are not ours to drop)."""
    names = [g["name"] for g in manifest["instance_groups"]]
    assert not REMOVED_GROUPS & set(names), names
    assert "smoke-tests" not in names, "cf-deployment's smoke-tests errand (gorouter's) is left"
    assert group(manifest, "istio-smoke-tests")["lifecycle"] == "errand"
    left = sorted(f"{where}/{item['name']}" for where, item in jobs(manifest)
                  if item["name"] in REMOVED_JOBS or item.get("release") in {"routing", "nats"})
    assert not left, f"jobs of the removed tier: {left}"
    assert not {"nats", "routing", "cf-smoke-tests"} & {r["name"] for r in manifest["releases"]}
    declared = {v["name"] for v in manifest["variables"]}
    undeclared = variables_referenced({k: v for k, v in manifest.items() if k != "variables"}) - declared
    assert undeclared <= OPERATOR_VARIABLES | {n for n in undeclared if n.startswith("external_")}, undeclared
    orphans = orphaned_variables(manifest) - (orphaned_variables(before) if before else set())
    assert not orphans, f"variables nothing uses: {sorted(orphans)}"
    assert "cf_app_sd_client_tls" in declared  # bosh-dns-adapter still uses it (Copilot serves its lookups)

    router, control = group(manifest, "istio-router"), group(manifest, "istio-control")
    assert router["jobs"][0]["name"] == "istio-router" and router["update"]["serial"] is True
    # The routers hold exactly the certificates Copilot's Gateway serves: none left over (TLS at the load
    # balancer drops both), none named that the routers lack.
    held = {c["name"] for c in (router["jobs"][0]["properties"].get("sds") or {}).get("certificates") or []}
    copilot = next(j for j in control["jobs"] if j["name"] == "copilot")
    served = {c["name"] for c in copilot["properties"].get("gateway", {}).get("certificates") or []}
    assert held == served, f"router certificates {sorted(held)}, Copilot's Gateway serves {sorted(served)}"
    zones = {az for g in manifest["instance_groups"] if g["name"] not in ("istio-router", "istio-control")
             for az in g["azs"]}
    assert set(router["azs"]) <= zones and set(control["azs"]) <= zones, (router["azs"], control["azs"], zones)

    if "use-haproxy" in cf_ops:
        # haproxy's http_backend (type http-router) resolves to the one job that provides that type.
        haproxy = next(item for _, item in jobs(manifest) if item["name"] == "haproxy")
        assert "http_backend" not in (haproxy.get("consumes") or {})  # implicit: by type
        providers = [name for _, item in jobs(manifest) for name in [item["name"]]
                     if (REPO / "jobs" / name / "spec").is_file()
                     and "http-router" in {p["type"] for p in _spec(name).get("provides") or []}]
        assert providers == ["istio-router"], providers
        assert haproxy["properties"]["ha_proxy"]["backend_port"] == 443  # the Gateway's HTTPS port
        assert haproxy["properties"]["ha_proxy"]["backend_ca_file"] == "((router_ssl.ca))"
        assert any(s.get("name") == "router-ssl" and s["cert_chain"] == "((router_ssl.certificate))"
                   for s in router["jobs"][0]["properties"]["sds"]["certificates"])
    if "use-postgres" in cf_ops:
        postgres = next(item for where, item in jobs(manifest) if item["name"] == "postgres")
        databases = postgres["properties"]["databases"]
        assert "routing-api" not in {d["name"] for d in databases["databases"]}
        assert "routing-api" not in {r["name"] for r in databases["roles"]}
    if "use-postgres" in cf_ops or "use-external-dbs" in cf_ops:
        assert not [w for w, item in jobs(manifest) if w == "database" and "registrar" in item["name"]]
