"""Trusted proxies in front of the routers (copilot gateway.trusted_proxy_hops; 1 with TLS ending at the
load balancer, istio-routing-disable-router-tls-termination.yml): the router filter sets the connection
managers' xff_num_trusted_hops, so the load balancer's X-Forwarded-Proto reaches the apps."""

from __future__ import annotations

import pytest

from copilot.config import ConfigError, parse
from copilot.istio import kinds
from copilot.istio.builder import build_router_objects
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import GatewaySettings


def _hcm_patch(settings: GatewaySettings) -> dict:
    [ef] = [o for o in build_router_objects(settings) if o.kind == kinds.ENVOY_FILTER]
    [patch] = [p for p in ef.spec.config_patches if p.apply_to == pb.EnvoyFilter.NETWORK_FILTER]
    return dict(patch.patch.value["typed_config"])


def test_no_proxy_is_trusted_by_default() -> None:
    assert parse({}).gateway.trusted_proxy_hops == 0
    assert "xff_num_trusted_hops" not in _hcm_patch(GatewaySettings())


def test_a_load_balancer_is_trusted_when_configured() -> None:
    settings = parse({"gateway": {"trusted_proxy_hops": 1}}).gateway
    assert settings.trusted_proxy_hops == 1
    assert _hcm_patch(settings)["xff_num_trusted_hops"] == 1


@pytest.mark.parametrize("value", [-1, 11, 1.5, "1"])
def test_bad_hop_counts_are_named(value: object) -> None:
    with pytest.raises(ConfigError, match="gateway.trusted_proxy_hops"):
        parse({"gateway": {"trusted_proxy_hops": value}})
