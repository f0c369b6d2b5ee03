"""enable-istio-routing.yml applied after each of cf-deployment v58's ops-files in ../shared/data/ops-v58
(the documented order: cf-deployment's ops-files first), alone and in the combinations operators use,
with bosh-lite: either the interpolated manifest means what the operator meant (manifest_meaning), or
`bosh int` fails at an operation that says why (never a silent loss)."""

from __future__ import annotations

import pytest
from manifest_meaning import assert_means_the_istio_tier
from opsfile_helpers import (
    BOSH_LITE,
    CF,
    CF_OPS,
    ENABLE,
    ENABLE_LITE,
    ISO_SEG_ROUTER,
    ONE_AZ,
    OPS,
    PXC_PROXY_ROUTE,
    STAGE1,
    STATIC_IPS,
    bosh,
    group,
    interpolate,
)

SUPPORTED = {
    "use-postgres": (), "use-external-dbs": (), "use-haproxy": (), "scale-to-one-az": (),
    "stop-skipping-tls-validation": (), "configure-default-router-group": (),
    "add-persistent-isolation-segment-router": (ISO_SEG_ROUTER,),
}
# ops-file -> a piece of the failing operation's path, which names what is not supported / what to use.
UNSUPPORTED = {
    "set-router-static-ips": "static_ips",
    "use-operator-provided-router-tls-certificates": "tls_pem/0",
    "disable-router-tls-termination": "'tls_pem'",
    "disable-http2": "disable-http2.yml-is-not-supported-by-the-Istio-routers",
    "use-internal-lookup-for-route-services": "use-internal-lookup-for-route-services.yml-is-not-supported",
}
COMBINATIONS = [("use-postgres", "use-haproxy"), ("use-external-dbs", "scale-to-one-az"),
                ("add-persistent-isolation-segment-router", "use-postgres")]


def _cf_ops(*names: str):
    return tuple(CF_OPS / f"{name}.yml" for name in names)


def test_every_cf_deployment_ops_file_is_covered():
    assert {p.stem for p in CF_OPS.glob("*.yml")} == set(SUPPORTED) | set(UNSUPPORTED)


@pytest.mark.parametrize("names", [(n,) for n in sorted(SUPPORTED)] + COMBINATIONS, ids="+".join)
def test_enable_after_cf_deployment_ops_files_means_the_istio_tier(names):
    with_pxc = () if {"use-postgres", "use-external-dbs"} & set(names) else (PXC_PROXY_ROUTE,)
    one_az = (ONE_AZ,) if "scale-to-one-az" in names else ()
    companions = tuple(c for name in names for c in SUPPORTED[name])
    manifest = interpolate(CF, *_cf_ops(*names), ENABLE, *companions, *with_pxc, *one_az)
    assert_means_the_istio_tier(manifest, names, before=interpolate(CF, *_cf_ops(*names)))
    if one_az:
        for name in ("istio-router", "istio-control"):
            assert group(manifest, name)["azs"] == ["z1"] and group(manifest, name)["instances"] == 1


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="scale-to-one-az.yml changes values only, which no ops-file operation can detect: "
                   "without istio-routing-scale-to-one-az.yml the Istio groups keep z1/z2 "
                   "(bosh deploy then fails on a cloud config without z2)")
def test_scale_to_one_az_without_the_companion_is_still_two_azs():
    manifest = interpolate(CF, *_cf_ops("scale-to-one-az"), ENABLE, PXC_PROXY_ROUTE)
    assert_means_the_istio_tier(manifest, ("scale-to-one-az",))


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
    assert STATIC_IPS.parent == OPS and PXC_PROXY_ROUTE.is_file() and ONE_AZ.is_file() and ISO_SEG_ROUTER.is_file()
