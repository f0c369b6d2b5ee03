"""Helpers the unit tests share that are not fixtures: a Copilot config for the test PKI."""

from __future__ import annotations

from typing import Any


def copilot_config(bbs_url: str, pki: Any, *, reconcile_interval_seconds: float = 30):
    """A Copilot config reading `bbs_url` with the test PKI (conftest's bbs_pki), its MCP and health servers on free ports."""
    from copilot.config import parse

    return parse(
        {
            "bbs": {
                "url": bbs_url,
                "ca_cert": str(pki.client.ca_cert),
                "client_cert": str(pki.client.client_cert),
                "client_key": str(pki.client.client_key),
                "reconcile_interval_seconds": reconcile_interval_seconds,
                "max_backoff_seconds": 0.1,
            },
            "mcp": {"listen": "127.0.0.1:0"},
            "health": {"listen": "127.0.0.1:0"},
        }
    )


def routed_weights(views: Any, host: str, path: str = "") -> list[tuple[str, int]]:
    """(process guid, percentage) of a host+path as the routers get it: the views' relative weights
    through the real builder (Istio's default of 100 where a route has one destination)."""
    from copilot.istio import kinds
    from copilot.istio.builder import build_host, destination_service
    from copilot.settings import GatewaySettings

    settings = GatewaySettings()
    routes = views.host_routes(host)
    [vs] = [o.spec for o in build_host(settings, routes) if o.kind is kinds.VIRTUAL_SERVICE]
    [route] = [r for r in vs.http if r.name == (path or "/")]
    destinations = routes.paths[path]
    guids = {destination_service(settings, routes.host, d).host: d.process_guid for d in destinations}
    return [(guids[t.destination.host], t.weight or 100) for t in route.route]
