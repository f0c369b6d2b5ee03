"""The istio-route-registrar program against the whole tier: it registers a platform route with
Copilot's registrar API over mutual TLS, the route answers through the real router, a failing health
check takes it out, and SIGTERM deregisters it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools.apps import AppInstance
from devtools.peers import REPO
from devtools.tier import Tier, wait_until


def test_registrar_program_routes_through_the_router(tier: Tier, apps, unique, tmp_path: Path) -> None:
    vm = AppInstance(f"{unique}-uaa-vm")
    apps.append(vm)
    host = f"uaa.{unique}.system.example.com"
    healthy = tmp_path / "healthy"
    healthy.write_text("")
    check = tmp_path / "check"
    check.write_text(f'#!/bin/sh\ntest -e "{healthy}"\n')
    check.chmod(0o755)
    client = tier.extra["registrar_client"]
    config = {
        "copilot": {"addresses": ["127.0.0.1"], "port": int(tier.extra["registrar_url"].rsplit(":", 1)[1]),
                    "server_name": "localhost", "ca_cert": str(tier.extra["registrar_ca"]),
                    "client_cert": str(client.cert_path), "client_key": str(client.key_path)},
        "address": "127.0.0.1", "instance_index": 0, "source": "uaa",
        "routes": [{"name": "uaa", "uris": [host, f"login.{unique}.system.example.com"], "port": vm.port,
                    "registration_interval_seconds": 0.5,
                    "health_check": {"name": "uaa-health", "script_path": str(check), "timeout_seconds": 0.4}}],
    }
    config_path = tmp_path / "registrar.json"
    config_path.write_text(json.dumps(config))
    process = subprocess.Popen([sys.executable, "-m", "route_registrar", "--config", str(config_path)],
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: tier.get(host).text.strip() == f"{unique}-uaa-vm", timeout=20, message="the registered route")
        assert tier.get(f"login.{unique}.system.example.com").status_code == 200
        healthy.unlink()
        wait_until(lambda: tier.get(host).status_code == 404, timeout=20, message="the unhealthy route to go")
        healthy.write_text("")
        wait_until(lambda: tier.get(host).status_code == 200, timeout=20, message="the route to come back")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        wait_until(lambda: tier.get(host).status_code == 404, timeout=20, message="deregistration on SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
