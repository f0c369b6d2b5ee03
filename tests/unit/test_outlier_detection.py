"""Passive health checking in the DestinationRules Copilot builds: an endpoint is ejected after consecutive
locally originated failures (never for its responses), a cluster whose endpoints are all ejected is still
tried (panic threshold), every subset and TCP port inherits it, and the copilot job's properties set it."""

from __future__ import annotations

import pytest

from copilot.config import ConfigError, parse
from copilot.istio import kinds
from copilot.istio.builder import build_host, build_tcp
from copilot.model import Backend, Destination, HostRoutes, TcpPortRoutes
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import GatewaySettings, OutlierDetection


def _routes() -> HostRoutes:
    backends = [Backend("10.0.0.1", 61001, 0, "w0", 0, "z1"), Backend("10.0.0.2", 61002, 0, "w1", 1, "z2")]
    canary = [Backend("10.0.0.3", 61003, 0, "c0", 0, "z1")]
    # Two processes (weighted): a service each.
    return HostRoutes(
        "app.example.com",
        {"": [Destination("web", 8080, 90, "http1", backends), Destination("canary", 8080, 10, "http1", canary)]},
    )


def _dr(settings: GatewaySettings) -> pb.DestinationRule:
    return next(o.spec for o in build_host(settings, _routes()) if o.kind == kinds.DESTINATION_RULE)  # type: ignore[return-value]


def test_default_ejects_after_three_local_failures_and_never_for_responses() -> None:
    dr = _dr(GatewaySettings())
    od = dr.traffic_policy.outlier_detection
    assert od.split_external_local_origin_errors is True
    assert od.HasField("consecutive_local_origin_failures") and od.consecutive_local_origin_failures.value == 3
    # Istio applies Envoy's default (5 consecutive 5xx) unless the wrapper is present: present, holding 0.
    assert od.HasField("consecutive_5xx_errors") and od.consecutive_5xx_errors.value == 0
    assert not od.HasField("consecutive_gateway_errors")  # off unless set
    assert od.base_ejection_time.ToMilliseconds() == 30_000
    assert od.interval.ToMilliseconds() == 10_000
    assert (od.max_ejection_percent, od.min_health_percent) == (100, 1)
    # A host with several processes routes to a service each: every one's DestinationRule has it.
    rules = [o.spec for o in build_host(GatewaySettings(), _routes()) if o.kind == kinds.DESTINATION_RULE]
    assert len(rules) == 2 and all(r.traffic_policy.outlier_detection == od for r in rules)  # type: ignore[attr-defined]


def test_subsets_with_their_own_policy_still_inherit_it() -> None:
    settings = GatewaySettings(instance_identity_ca_file="/ca.crt", instance_routing=True)
    routes = HostRoutes(
        "app.example.com",
        {"": [Destination("web", 8080, 100, "http1", [Backend("10.0.0.1", 0, 61001, "w0", 0)], app_guid="app")]},
    )
    dr = next(o.spec for o in build_host(settings, routes) if o.kind == kinds.DESTINATION_RULE)
    assert dr.traffic_policy.HasField("outlier_detection")  # type: ignore[attr-defined]
    assert len(dr.subsets) == 1  # type: ignore[attr-defined]  # the instance's; the one process is the host's cluster
    assert dr.traffic_policy.HasField("tls")  # type: ignore[attr-defined]
    for subset in dr.subsets:  # type: ignore[attr-defined]
        assert subset.traffic_policy.HasField("tls") and not subset.traffic_policy.HasField("outlier_detection")


def test_tcp_ports_get_it_too() -> None:
    objects = build_tcp(GatewaySettings(), TcpPortRoutes(1024, [Backend("10.0.0.1", 61001)]))
    dr = next(o.spec for o in objects if o.kind == kinds.DESTINATION_RULE)
    assert dr.traffic_policy.outlier_detection.consecutive_local_origin_failures.value == 3  # type: ignore[attr-defined]


def test_settings_are_honoured_and_zero_turns_it_off() -> None:
    custom = OutlierDetection(consecutive_failures=1, base_ejection_seconds=2.5, max_ejection_percent=50, min_health_percent=0)
    od = _dr(GatewaySettings(outlier_detection=custom)).traffic_policy.outlier_detection
    assert od.consecutive_local_origin_failures.value == 1
    assert od.base_ejection_time.ToMilliseconds() == 2500 and od.interval.ToMilliseconds() == 2500
    assert (od.max_ejection_percent, od.min_health_percent) == (50, 0)
    off = _dr(GatewaySettings(outlier_detection=OutlierDetection(consecutive_failures=0)))
    assert not off.traffic_policy.HasField("outlier_detection")


def test_config_file_keys() -> None:
    assert parse({}).gateway.outlier_detection == OutlierDetection()
    config = parse({"gateway": {"outlier_detection": {"consecutive_failures": 5, "base_ejection_seconds": 10,
                                                      "max_ejection_percent": 34, "min_health_percent": 50}}})
    assert config.gateway.outlier_detection == OutlierDetection(5, 10.0, 34, 50)


@pytest.mark.parametrize(
    ("key", "value"),
    [("consecutive_failures", -1), ("consecutive_failures", 1.5), ("base_ejection_seconds", 0),
     ("max_ejection_percent", 0), ("max_ejection_percent", 101), ("min_health_percent", 101), ("bogus", 1)],
)
def test_config_file_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"gateway.outlier_detection.{key}"):
        parse({"gateway": {"outlier_detection": {key: value}}})
