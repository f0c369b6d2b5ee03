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
    assert_router_shards(manifest, cf_ops, before)
    assert_links_resolve(manifest)
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


ISOLATION_SEGMENT = "persistent_isolation_segment"  # what add-persistent-isolation-segment-router.yml names
SHARD_DEFAULTS = {"routing_table_sharding_mode": "all", "isolation_segments": []}


def router_groups(manifest: dict) -> dict[str, str]:
    """Every instance group running an Istio router -> the router shard it names (istio-router router_shard)."""
    spec_default = _spec("istio-router")["properties"]["router_shard"]["default"]
    return {g["name"]: (j.get("properties") or {}).get("router_shard", spec_default)
            for g in manifest["instance_groups"] for j in g.get("jobs") or [] if j["name"] == "istio-router"}


def copilot_shards(manifest: dict) -> list[dict]:
    """Copilot's gateway.router_shards as the copilot job sees them (its spec default when not set)."""
    [copilot] = [j for _, j in jobs(manifest) if j["name"] == "copilot"]
    shards = ((copilot.get("properties") or {}).get("gateway") or {}).get("router_shards")
    return [{**SHARD_DEFAULTS, **s} for s in (shards or _spec("copilot")["properties"]["gateway.router_shards"]["default"])]


def assert_router_shards(manifest: dict, cf_ops: tuple[str, ...], before: dict | None) -> None:
    """The routers' shards are Copilot's: every router group names a shard Copilot lists, every shard has
    a router group, and with add-persistent-isolation-segment-router.yml the segment has its own group
    (the one that ops-file added, where it put it) routing that segment only, the main routers the
    shared segment only, configured alike but for their shard."""
    routers, shards = router_groups(manifest), copilot_shards(manifest)
    names = [s["name"] for s in shards]
    assert len(set(names)) == len(names), names
    assert set(routers.values()) == set(names), (routers, names)
    by_name = {s["name"]: s for s in shards}
    if "add-persistent-isolation-segment-router" not in cf_ops:
        assert routers == {"istio-router": "all"} and shards == [{"name": "all", **SHARD_DEFAULTS}]
        return
    assert set(routers) == {"istio-router", "iso-seg-router"}, routers
    iso, shared = by_name[routers["iso-seg-router"]], by_name[routers["istio-router"]]
    assert (iso["routing_table_sharding_mode"], iso["isolation_segments"]) == ("segments", [ISOLATION_SEGMENT])
    assert (shared["routing_table_sharding_mode"], shared["isolation_segments"]) == ("shared-and-segments", [])
    # One router group per segment: no other shard routes the segment.
    routing_it = [s["name"] for s in shards
                  if ISOLATION_SEGMENT in s["isolation_segments"] or s["routing_table_sharding_mode"] == "all"]
    assert routing_it == [iso["name"]], routing_it
    segment_group, main = group(manifest, "iso-seg-router"), group(manifest, "istio-router")
    [segment_router] = segment_group["jobs"]  # gorouter is gone, nothing else came
    [main_router] = [j for j in main["jobs"] if j["name"] == "istio-router"]
    assert segment_router["name"] == "istio-router" and segment_router["release"] == "istio-routing"
    unshard = lambda props: {k: v for k, v in props.items() if k != "router_shard"}  # noqa: E731
    assert unshard(segment_router["properties"]) == unshard(main_router["properties"])
    if before is not None:
        was = group(before, "iso-seg-router")
        for key in ("azs", "instances", "vm_extensions", "networks", "update", "vm_type", "stemcell"):
            assert segment_group.get(key) == was.get(key), key


def assert_links_resolve(manifest: dict) -> None:
    """gorouter's link alias (router_primary, add-persistent-isolation-segment-router.yml's) is gone with
    gorouter, and every link consumed from one of our routers' aliases names one that is provided."""
    provided = {link["as"] for _, item in jobs(manifest) for link in (item.get("provides") or {}).values()
                if isinstance(link, dict) and "as" in link}
    wanted = {(where, item["name"], link["from"]) for where, item in jobs(manifest)
              for link in (item.get("consumes") or {}).values() if isinstance(link, dict) and "from" in link}
    assert "router_primary" not in provided | {alias for _, _, alias in wanted}, sorted(wanted)
    ours = {alias for where, item in jobs(manifest) if item["name"] == "istio-router"
            for alias in [link.get("as") for link in (item.get("provides") or {}).values() if isinstance(link, dict)]
            if alias}
    routers = set(router_groups(manifest))
    # With two router groups, every http-router consumer must say which one it takes (BOSH refuses two).
    if len(routers) > 1:
        assert ours, "two groups provide http-router and neither has an alias"
    assert {w for w in wanted if w[2].startswith("istio-router")} <= {w for w in wanted if w[2] in ours}
