"""Copilot's wiring of the xDS side: the store feeds the MCP server, and pushes and NACKs reach the metrics."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from copilot.config import parse
from copilot.istio import kinds
from copilot.main import Copilot
from copilot.metrics import REGISTRY
from copilot.protos import istio_mcp_pb2 as mcp
from devtools.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

GW = kinds.GATEWAY.collection


def sample(name: str, type_url: str) -> float:
    return REGISTRY.get_sample_value(name, {"type_url": type_url}) or 0.0


@pytest.fixture
def copilot() -> Iterator[Copilot]:
    copilot = Copilot(parse({"mcp": {"listen": "127.0.0.1:0"}, "health": {"listen": "127.0.0.1:0"}}))
    copilot.start()
    try:
        yield copilot
    finally:
        copilot.stop()


def test_istiod_gets_the_published_objects_and_its_nack_is_counted(copilot: Copilot) -> None:
    wait_until(lambda: copilot.store.released, timeout=10, message="the store released (no sources: at once)")
    pushes, nacks = sample("copilot_pushes_total", GW), sample("copilot_istiod_nacks_total", GW)
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{copilot.mcp.port}") as channel:
        responses = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(iter(requests.get, None))
        requests.put(discovery_pb2.DiscoveryRequest(type_url=GW))
        response = next(responses)
        served = sorted(mcp.Resource.FromString(r.value).metadata.name for r in response.resources)
        assert served == copilot.store.names(kinds.GATEWAY)
        assert response.version_info == copilot.store.version(kinds.GATEWAY)
        assert sample("copilot_pushes_total", GW) == pushes + 1
        rejected = discovery_pb2.DiscoveryRequest(type_url=GW, response_nonce=response.nonce)
        rejected.error_detail.CopyFrom(status_pb2.Status(code=3, message="Gateway: invalid"))
        requests.put(rejected)
        wait_until(lambda: sample("copilot_istiod_nacks_total", GW) == nacks + 1, timeout=10, message="the NACK counted")
        requests.put(None)
        responses.cancel()
