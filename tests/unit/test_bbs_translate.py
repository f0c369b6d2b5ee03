"""Diego records -> the route model: every payload is validated, bad entries are skipped, the rest kept."""

from __future__ import annotations

import json
import logging

import pytest

from copilot.model import HttpRoute, InternalRoute, PortMapping, ProcessRoutes, TcpRoute
from copilot.protos import bbs_pb2 as bbs
from copilot.sources import bbs_translate


def desired(**routes: object) -> bbs.DesiredLRP:
    """A DesiredLRP whose routes are given per router; str/bytes values are stored raw, others as JSON."""
    lrp = bbs.DesiredLRP(process_guid="pg-1", domain="cf-apps", instances=1)
    for router, value in routes.items():
        key = router.replace("_", "-")
        if isinstance(value, bytes):
            lrp.routes.routes[key] = value
        elif isinstance(value, str):
            lrp.routes.routes[key] = value.encode()
        else:
            lrp.routes.routes[key] = json.dumps(value).encode()
    return lrp


def http(*entries: dict) -> ProcessRoutes:
    return bbs_translate.process_routes(desired(cf_router=list(entries)))


# ---------------------------------------------------------------- cf-router


def test_cf_router_hostnames_with_and_without_paths() -> None:
    routes = http(
        {"hostnames": ["App.Example.com", "app.example.com/api/", "www.example.com."], "port": 8080},
        {"hostnames": ["admin.example.com"], "port": 9090, "protocol": "http2", "route_service_url": "https://rs.example.com"},
    )
    assert routes.http == (
        HttpRoute("admin.example.com", "", 9090, "http2", "https://rs.example.com"),
        HttpRoute("app.example.com", "", 8080),
        HttpRoute("app.example.com", "/api", 8080),
        HttpRoute("www.example.com", "", 8080),
    )
    assert routes.tcp == () and routes.internal == ()


def test_duplicate_hostnames_collapse() -> None:
    routes = http({"hostnames": ["a.example.com", "A.EXAMPLE.COM", "a.example.com."], "port": 8080})
    assert routes.http == (HttpRoute("a.example.com", "", 8080),)


def test_invalid_hostname_is_skipped_but_the_entrys_other_hostnames_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    routes = http(
        {"hostnames": ["good.example.com", "bad_host.example.com", "also-good.example.com/x", "x.com/../y", 7], "port": 8080}
    )
    assert [(r.host, r.path) for r in routes.http] == [("also-good.example.com", "/x"), ("good.example.com", "")]
    skipped = [r for r in caplog.records if r.getMessage() == "route skipped"]
    assert len(skipped) == 3
    assert all(r.process_guid == "pg-1" and r.router == "cf-router" for r in skipped)  # type: ignore[attr-defined]
    assert all(r.error.startswith("cf-router.hostnames: ") for r in skipped)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"hostnames": ["a.example.com"], "port": 2222}, "cf-router.port"),
        ({"hostnames": ["a.example.com"], "port": "8080"}, "cf-router.port"),
        ({"hostnames": ["a.example.com"]}, "cf-router.port"),
        ({"hostnames": ["a.example.com"], "port": 8080, "protocol": "tcp"}, "cf-router.protocol"),
        ({"hostnames": ["a.example.com"], "port": 8080, "route_service_url": 5}, "cf-router.route_service_url"),
        ({"hostnames": "a.example.com", "port": 8080}, "cf-router.hostnames"),
        ({"port": 8080}, "cf-router.hostnames"),
    ],
)
def test_bad_cf_router_entry_is_skipped_and_others_kept(caplog: pytest.LogCaptureFixture, entry: dict, field: str) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    routes = http(entry, {"hostnames": ["kept.example.com"], "port": 8080})
    assert routes.http == (HttpRoute("kept.example.com", "", 8080),)
    [record] = [r for r in caplog.records if r.getMessage() == "route skipped"]
    assert record.error.startswith(f"{field}: ")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe", b'{"hostnames": ["a.example.com"], "port": 8080}', b'["a.example.com"]', b"42", b'"text"'],
)
def test_bad_json_for_one_router_is_skipped_others_kept(raw: bytes) -> None:
    routes = bbs_translate.process_routes(
        desired(
            cf_router=raw,
            tcp_router=[{"external_port": 61000, "container_port": 8080}],
            internal_router=[{"hostname": "app.apps.internal"}],
        )
    )
    assert routes.http == ()
    assert routes.tcp == (TcpRoute(61000, 8080),)
    assert routes.internal == (InternalRoute("app.apps.internal"),)


def test_null_and_missing_routers_mean_no_routes() -> None:
    assert bbs_translate.process_routes(desired(cf_router=b"null")) == ProcessRoutes()
    assert bbs_translate.process_routes(desired()) == ProcessRoutes()
    assert bbs_translate.process_routes(desired(cf_router=[])) == ProcessRoutes()


def test_unknown_routers_are_ignored() -> None:
    routes = bbs_translate.process_routes(
        desired(diego_ssh={"container_port": 2222}, cf_router=[{"hostnames": ["a.b"], "port": 8080}])
    )
    assert routes.http == (HttpRoute("a.b", "", 8080),)


# ---------------------------------------------------------------- tcp-router and internal-router


def test_tcp_router() -> None:
    routes = bbs_translate.process_routes(
        desired(
            tcp_router=[
                {"external_port": 61001, "container_port": 8080, "router_group_guid": "rg-1"},
                {"external_port": 61002, "container_port": 2222},  # SSH: refused
                {"external_port": 0, "container_port": 8080},  # bad external port
                {"external_port": 61003, "container_port": 9090},
                {"container_port": 9090},
            ]
        )
    )
    assert routes.tcp == (TcpRoute(61001, 8080, "rg-1"), TcpRoute(61003, 9090, ""))


def test_internal_router() -> None:
    routes = bbs_translate.process_routes(
        desired(
            internal_router=[{"hostname": "App.apps.internal"}, {"hostname": "bad host"}, {}, {"hostname": "b.apps.internal"}]
        )
    )
    assert routes.internal == (InternalRoute("app.apps.internal"), InternalRoute("b.apps.internal"))


# ---------------------------------------------------------------- instances


def actual(*, routable: bool | None = None, preferred: int = bbs.ActualLRPNetInfo.HOST) -> bbs.ActualLRP:
    lrp = bbs.ActualLRP(state="RUNNING", presence=bbs.ActualLRP.EVACUATING, availability_zone="z2")
    lrp.actual_lrp_key.CopyFrom(bbs.ActualLRPKey(process_guid="pg-1", index=2, domain="cf-apps"))
    lrp.actual_lrp_instance_key.CopyFrom(bbs.ActualLRPInstanceKey(instance_guid="ig-1", cell_id="cell-1"))
    lrp.actual_lrp_net_info.CopyFrom(
        bbs.ActualLRPNetInfo(
            address="10.0.0.5",
            instance_address="10.255.1.2",
            preferred_address=preferred,
            ports=[
                bbs.PortMapping(container_port=8080, host_port=61001, container_tls_proxy_port=61443, host_tls_proxy_port=61002),
                bbs.PortMapping(container_port=2222, host_port=61003),
            ],
        )
    )
    if routable is not None:
        lrp.routable = routable
    return lrp


def test_instance_from_actual_lrp() -> None:
    instance = bbs_translate.instance(actual())
    assert (instance.process_guid, instance.index, instance.instance_guid) == ("pg-1", 2, "ig-1")
    assert (instance.state, instance.address, instance.instance_address) == ("RUNNING", "10.0.0.5", "10.255.1.2")
    assert instance.prefer_instance_address is False
    assert instance.availability_zone == "z2"
    assert instance.ports == (PortMapping(8080, 61001, 61443, 61002), PortMapping(2222, 61003, 0, 0))
    backend = instance.backend_for(8080)
    assert backend is not None and (backend.address, backend.port, backend.tls_port) == ("10.0.0.5", 61001, 61002)
    assert instance.backend_for(2222) is None


def test_instance_prefers_instance_address() -> None:
    instance = bbs_translate.instance(actual(preferred=bbs.ActualLRPNetInfo.INSTANCE))
    assert instance.prefer_instance_address is True
    backend = instance.backend_for(8080)
    assert backend is not None and (backend.address, backend.port, backend.tls_port) == ("10.255.1.2", 8080, 61443)
    # UNKNOWN means the host address, as HOST does
    assert bbs_translate.instance(actual(preferred=bbs.ActualLRPNetInfo.UNKNOWN)).prefer_instance_address is False


@pytest.mark.parametrize(("routable", "expected"), [(None, True), (True, True), (False, False)])
def test_routable_unset_means_routable(routable: bool | None, expected: bool) -> None:
    instance = bbs_translate.instance(actual(routable=routable))
    assert instance.routable is expected
    assert (instance.backend_for(8080) is not None) is expected


@pytest.mark.parametrize(("routable", "expected"), [(None, True), (True, True), (False, False)])
def test_instance_from_changed_event_info(routable: bool | None, expected: bool) -> None:
    lrp = actual()
    info = bbs.ActualLRPInfo(state="RUNNING", presence=bbs.ActualLRP.ORDINARY, availability_zone="z3")
    info.actual_lrp_net_info.CopyFrom(lrp.actual_lrp_net_info)
    if routable is not None:
        info.Routable = routable
    instance = bbs_translate.instance_from_info(lrp.actual_lrp_key, lrp.actual_lrp_instance_key, info)
    assert (instance.process_guid, instance.index, instance.instance_guid, instance.availability_zone) == (
        "pg-1",
        2,
        "ig-1",
        "z3",
    )
    assert instance.routable is expected
    assert instance.ports[0] == PortMapping(8080, 61001, 61443, 61002)
