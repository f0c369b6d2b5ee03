"""Helpers the unit tests share that are not fixtures: a Copilot config for the test PKI."""

from __future__ import annotations

from typing import Any


def copilot_config(bbs_url: str, pki: Any, *, reconcile_interval_seconds: float = 30):
    """A Copilot config reading `bbs_url` with the test PKI (conftest's bbs_pki), its MCP and health servers on free ports."""
    from copilot.config import parse

    return parse({
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
    })
