"""enable-istio-routing.yml applied after each of cf-deployment v58's ops-files in ../shared/data/ops-v58
(the documented order: cf-deployment's ops-files first), alone and in the combinations operators use,
with bosh-lite: either the interpolated manifest means what the operator meant (manifest_meaning), or
`bosh int` fails at an operation that says why (never a silent loss). A cf-deployment ops-file with a
companion of ours fails with a path naming both files, and the companion, applied after
enable-istio-routing.yml instead, makes the Istio tier do what the cf-deployment ops-file did."""

from __future__ import annotations

import pytest
import yaml
from manifest_meaning import assert_means_the_istio_tier
from opsfile_helpers import (
    BOSH_LITE,
    CF,
    CF_OPS,
    DEFAULT_ROUTER_GROUP,
    ENABLE,
    ENABLE_LITE,
    HTTP2_OFF,
    INTERNAL_ROUTE_SERVICES,
    ISO_SEG_ROUTER,
    ONE_AZ,
    OPS,
    PXC_PROXY_ROUTE,
    STAGE1,
    STATIC_IPS,
    TLS_AT_LB,
    bosh,
    group,
    interpolate,
    job,
)

SUPPORTED = {
    "use-postgres": (), "use-external-dbs": (), "use-haproxy": (), "stop-skipping-tls-validation": (),
    "add-persistent-isolation-segment-router": (ISO_SEG_ROUTER,),
}
# ops-file -> a piece of the failing operation's path, which names what is not supported / what to use.
UNSUPPORTED = {
    "set-router-static-ips": "static_ips",
    "use-operator-provided-router-tls-certificates": "tls_pem/0",
}
# cf-deployment ops-file -> our companion, applied after enable-istio-routing.yml instead of it; the
# guard's error names both ("<cf file>-is-replaced-by[=-]<companion>").
REPLACED = {
    "disable-http2": HTTP2_OFF,
    "disable-router-tls-termination": TLS_AT_LB,
    "use-internal-lookup-for-route-services": INTERNAL_ROUTE_SERVICES,
    "configure-default-router-group": DEFAULT_ROUTER_GROUP,
    "scale-to-one-az": ONE_AZ,
}
COMBINATIONS = [("use-postgres", "use-haproxy"), ("add-persistent-isolation-segment-router", "use-postgres")]


def _cf_ops(*names: str):
    return tuple(CF_OPS / f"{name}.yml" for name in names)


def test_every_cf_deployment_ops_file_is_covered():
    assert {p.stem for p in CF_OPS.glob("*.yml")} == set(SUPPORTED) | set(UNSUPPORTED) | set(REPLACED)


@pytest.mark.parametrize("names", [(n,) for n in sorted(SUPPORTED)] + COMBINATIONS, ids="+".join)
def test_enable_after_cf_deployment_ops_files_means_the_istio_tier(names):
    with_pxc = () if {"use-postgres", "use-external-dbs"} & set(names) else (PXC_PROXY_ROUTE,)
    companions = tuple(c for name in names for c in SUPPORTED[name])
    manifest = interpolate(CF, *_cf_ops(*names), ENABLE, *companions, *with_pxc)
    assert_means_the_istio_tier(manifest, names, before=interpolate(CF, *_cf_ops(*names)))


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_a_cf_deployment_ops_file_with_a_companion_fails_naming_it(name):
    result = bosh("int", str(CF), "-o", str(CF_OPS / f"{name}.yml"), "-o", str(ENABLE))
    assert result.returncode != 0, f"{name}: enable-istio-routing.yml interpolated; what it set is silently lost"
    assert "enable-istio-routing.yml failed" in result.stderr, result.stderr
    assert f"{name}.yml-is-replaced-by" in result.stderr and REPLACED[name].name in result.stderr, result.stderr


def test_the_companions_alone_and_with_other_ops_files_mean_the_istio_tier():
    manifest = interpolate(CF, ENABLE, PXC_PROXY_ROUTE, *REPLACED.values())
    assert_means_the_istio_tier(manifest, tuple(REPLACED), before=interpolate(CF))
    external = _cf_ops("use-external-dbs")
    manifest = interpolate(CF, *external, ENABLE, ONE_AZ)
    assert_means_the_istio_tier(manifest, ("use-external-dbs", "scale-to-one-az"), before=interpolate(CF, *external))


def test_http2_off_is_copilots_gateway_property():
    plain = job(interpolate(CF, ENABLE, PXC_PROXY_ROUTE), "istio-control", "copilot")["properties"]["gateway"]
    off = job(interpolate(CF, ENABLE, PXC_PROXY_ROUTE, HTTP2_OFF), "istio-control", "copilot")["properties"]["gateway"]
    assert "enable_http2" not in plain and off["enable_http2"] is False  # the job's default: true


def test_tls_at_the_load_balancer_leaves_the_routers_http_only():
    manifest = interpolate(CF, ENABLE, PXC_PROXY_ROUTE, TLS_AT_LB)
    assert_means_the_istio_tier(manifest, ("disable-router-tls-termination",), before=interpolate(CF))
    gateway = job(manifest, "istio-control", "copilot")["properties"]["gateway"]
    assert "certificates" not in gateway and gateway["trusted_proxy_hops"] == 1  # no HTTPS server; the LB's XFP kept
    assert job(manifest, "istio-router", "istio-router")["properties"]["sds"]["certificates"] == []
    # As disable-router-tls-termination.yml: no router_ssl / router_ca, and nothing refers to them.
    assert not {"router_ssl", "router_ca"} & {v["name"] for v in manifest["variables"]}
    assert "router_ssl" not in yaml.safe_dump(manifest) and "router_ca" not in yaml.safe_dump(manifest)


def test_internal_route_service_lookup_is_copilots_route_services_property():
    manifest = interpolate(CF, ENABLE, PXC_PROXY_ROUTE, INTERNAL_ROUTE_SERVICES)
    route_services = job(manifest, "istio-control", "copilot")["properties"]["gateway"]["route_services"]
    assert route_services == {"enabled": True, "internal_lookup": True}


def test_the_default_router_groups_ports_go_to_copilot():
    manifest = interpolate(CF, ENABLE, PXC_PROXY_ROUTE, DEFAULT_ROUTER_GROUP)
    groups = job(manifest, "istio-control", "copilot")["properties"]["routing_api"]["router_groups"]
    assert groups == [{"name": "default-tcp", "type": "tcp", "reservable_ports": "((default_router_group_reservable_ports))"}]
    assert_means_the_istio_tier(manifest)
    ports = ("-v", "default_router_group_reservable_ports=2000-2099")
    given = job(interpolate(CF, ENABLE, PXC_PROXY_ROUTE, DEFAULT_ROUTER_GROUP, extra=ports), "istio-control", "copilot")
    assert given["properties"]["routing_api"]["router_groups"][0]["reservable_ports"] == "2000-2099"


def test_one_az_scales_what_scale_to_one_az_scales_and_the_istio_groups():
    ours = interpolate(CF, ENABLE, PXC_PROXY_ROUTE, ONE_AZ)
    theirs = interpolate(CF, *_cf_ops("scale-to-one-az"))
    # Every group cf-deployment's file changes, and that enable-istio-routing.yml keeps, changes alike.
    base = {g["name"]: g for g in interpolate(CF)["instance_groups"]}
    changed = {g["name"] for g in theirs["instance_groups"]
               if (g["azs"], g["instances"]) != (base[g["name"]]["azs"], base[g["name"]]["instances"])}
    kept = {g["name"] for g in ours["instance_groups"]} & changed
    assert changed - kept == {"nats", "router", "tcp-router"}  # the groups the Istio groups replace
    def placement(manifest: dict, name: str) -> tuple:
        return group(manifest, name)["azs"], group(manifest, name)["instances"]

    for name in kept:
        assert placement(ours, name) == placement(theirs, name), name
    for name in ("istio-router", "istio-control"):
        assert group(ours, name)["azs"] == ["z1"] and group(ours, name)["instances"] == 1
    plain = interpolate(CF, ENABLE, PXC_PROXY_ROUTE)
    for name in {g["name"] for g in ours["instance_groups"]} - changed - {"istio-router", "istio-control"}:
        assert placement(ours, name) == placement(plain, name), name  # the others as enable-istio-routing.yml has them


def test_a_one_az_router_however_made_fails_naming_the_companion(tmp_path):
    one_az_router = tmp_path / "one-az-router.yml"
    one_az_router.write_text("- type: replace\n  path: /instance_groups/name=router/azs\n  value: [z3]\n")
    result = bosh("int", str(CF), "-o", str(one_az_router), "-o", str(ENABLE))
    assert result.returncode != 0 and "istio-routing-scale-to-one-az.yml" in result.stderr, result.stderr


def test_bosh_lite_with_postgres():
    manifest = interpolate(CF, BOSH_LITE, *_cf_ops("use-postgres"), ENABLE, ENABLE_LITE)
    assert_means_the_istio_tier(manifest, ("use-postgres",), before=interpolate(CF, BOSH_LITE, *_cf_ops("use-postgres")))
    assert group(manifest, "istio-router")["networks"] == [{"name": "default", "static_ips": ["10.244.0.34"]}]


def test_bosh_lite_with_the_isolation_segment_router():
    cf_ops = _cf_ops("add-persistent-isolation-segment-router")
    manifest = interpolate(CF, BOSH_LITE, *cf_ops, ENABLE, ENABLE_LITE, ISO_SEG_ROUTER, PXC_PROXY_ROUTE)
    assert_means_the_istio_tier(manifest, ("add-persistent-isolation-segment-router",),
                                before=interpolate(CF, BOSH_LITE, *cf_ops))


def test_isolation_segment_router_without_its_companion_is_no_istio_tier():
    """enable-istio-routing.yml cannot see the ops-files after it: without istio-routing-isolation-segment-
    router.yml the manifest keeps a gorouter whose release is gone (bosh deploy refuses it), which the
    meaning check names; the companion alone (without what it converts) fails `bosh int`."""
    cf_ops = _cf_ops("add-persistent-isolation-segment-router")
    manifest = interpolate(CF, *cf_ops, ENABLE, PXC_PROXY_ROUTE)
    assert [j["release"] for j in group(manifest, "iso-seg-router")["jobs"]] == ["routing"]
    assert "routing" not in {r["name"] for r in manifest["releases"]}
    with pytest.raises(AssertionError, match="jobs of the removed tier: .*iso-seg-router/gorouter"):
        assert_means_the_istio_tier(manifest, ("add-persistent-isolation-segment-router",))
    for ops in ((ENABLE, ISO_SEG_ROUTER), (*cf_ops, ISO_SEG_ROUTER)):
        result = bosh("int", str(CF), *[a for op in ops for a in ("-o", str(op))])
        assert result.returncode != 0 and "istio-routing-isolation-segment-router.yml failed" in result.stderr, ops


def test_the_staged_switch_refuses_the_isolation_segment_router():
    """Stage 1's routers (one shard, all) would serve the segment's apps behind the shared load balancer
    at stage 2: refused, naming the way that works."""
    result = bosh("int", str(CF), "-o", str(CF_OPS / "add-persistent-isolation-segment-router.yml"), "-o", str(STAGE1))
    assert result.returncode != 0 and "add-istio-routing.yml failed" in result.stderr
    assert "enable-istio-routing.yml-and-istio-routing-isolation-segment-router.yml" in result.stderr


def test_bosh_lite_and_plain(lite, enabled):
    assert_means_the_istio_tier(lite)
    assert_means_the_istio_tier(enabled)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_combinations_fail_bosh_int_at_a_guard(name):
    result = bosh("int", str(CF), "-o", str(CF_OPS / f"{name}.yml"), "-o", str(ENABLE))
    assert result.returncode != 0, f"{name}: enable-istio-routing.yml interpolated; what it set is silently lost"
    assert "enable-istio-routing.yml failed" in result.stderr and UNSUPPORTED[name] in result.stderr, result.stderr


def test_static_ips_go_to_the_istio_routers_with_the_companion():
    manifest = interpolate(CF, ENABLE, STATIC_IPS, PXC_PROXY_ROUTE)
    assert group(manifest, "istio-router")["networks"] == [{"name": "default", "static_ips": "((router_static_ips))"}]
    assert_means_the_istio_tier(manifest)


def test_pxc_proxy_dashboard_route_needs_pxc():
    manifest = interpolate(CF, ENABLE, PXC_PROXY_ROUTE)
    registrar = next(j for j in group(manifest, "database")["jobs"] if j["name"] == "istio-route-registrar")
    assert [r["name"] for r in registrar["properties"]["route_registrar"]["routes"]] == [
        "cf-mysql-proxy", "cf-mysql-proxy-aggregator"]
    result = bosh("int", str(CF), "-o", str(CF_OPS / "use-postgres.yml"), "-o", str(ENABLE), "-o", str(PXC_PROXY_ROUTE))
    assert result.returncode != 0 and "pxc-mysql" in result.stderr


def test_companion_ops_files_are_in_the_repository():
    assert STATIC_IPS.parent == OPS and PXC_PROXY_ROUTE.is_file() and ISO_SEG_ROUTER.is_file()
    assert all(p.is_file() for p in REPLACED.values())
