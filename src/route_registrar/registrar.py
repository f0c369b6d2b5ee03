"""Registers a VM's platform routes with every Copilot, renews them, and honours their health checks.

Each route runs on its own thread: every `registration_interval` it runs the route's health check
(if any; killed after its timeout) and then either registers the route's uris (healthy: POST, with a
TTL of `ttl_intervals` intervals, so a registrar that dies is forgotten) or deregisters them
(unhealthy: DELETE). `stop()` deregisters whatever is registered. Copilot instances do not share
state, so every request goes to every Copilot; one unreachable Copilot does not stop the others.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from route_registrar.config import MAX_TTL_SECONDS, Config, CopilotTarget, HealthCheck, Route, split_uri

log = logging.getLogger("route_registrar")

REGISTRATIONS_PATH = "/v1/registrations"


def expand_uris(route: Route, instance_index: int) -> list[str]:
    """The route's uris; with prepend_instance_index each host becomes `<index>-<host>` (as route_registrar does)."""
    if not route.prepend_instance_index:
        return list(route.uris)
    return [f"{instance_index}-{uri}" for uri in route.uris]


def registrations(route: Route, config: Config) -> list[dict]:
    """The registrar API's registration objects for one route on this VM."""
    ttl = min(MAX_TTL_SECONDS, max(route.registration_interval_seconds * config.ttl_intervals, 1.0))
    result = []
    for uri in expand_uris(route, config.instance_index):
        host, path = split_uri(uri)
        item: dict = {
            "host": host,
            "path": path,
            "address": config.address,
            "source": f"{config.source}/{route.name}",
            "ttl_seconds": ttl,
        }
        if route.port:
            item["port"] = route.port
        if route.tls_port:  # preferred by Copilot, as gorouter prefers it
            item["tls_port"] = route.tls_port
            item["server_cert_domain_san"] = route.server_cert_domain_san
        result.append(item)
    return result


class CopilotError(RuntimeError):
    """A registrar API request failed (connection, TLS or a non-200 answer)."""


class CopilotClient:
    """POST/DELETE /v1/registrations on each Copilot over mutual TLS, verifying `server_name`."""

    def __init__(self, target: CopilotTarget) -> None:
        self.target = target
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(target.ca_cert)
        context.load_cert_chain(target.client_cert, target.client_key)
        self._context = context

    def send(self, method: str, items: list[dict]) -> list[str]:
        """Sends to every Copilot; returns one error message per Copilot that did not accept it."""
        errors = []
        for address in self.target.addresses:
            try:
                self._request(address, method, items)
            except CopilotError as error:
                errors.append(f"{address}:{self.target.port}: {error}")
        return errors

    def _request(self, address: str, method: str, items: list[dict]) -> None:
        body = json.dumps({"registrations": items}).encode()
        timeout = self.target.request_timeout_seconds
        try:
            raw = socket.create_connection((address, self.target.port), timeout=timeout)
        except OSError as error:
            raise CopilotError(f"cannot connect: {error}") from None
        connection = http.client.HTTPConnection(address, self.target.port, timeout=timeout)
        try:
            connection.sock = self._context.wrap_socket(raw, server_hostname=self.target.server_name)
            connection.request(method, REGISTRATIONS_PATH, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read(64 << 10)
        except (OSError, http.client.HTTPException) as error:  # ssl.SSLError is an OSError
            raise CopilotError(f"{method} failed: {error}") from None
        finally:
            connection.close()
            raw.close()
        if response.status != 200:
            raise CopilotError(f"{method} answered {response.status}: {answer.decode(errors='replace')[:300]}")


def run_health_check(check: HealthCheck) -> tuple[bool, str]:
    """Runs the script; healthy when it exits 0 within its timeout (else it is killed, with its children)."""
    try:
        process = subprocess.Popen(
            [check.script_path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        return False, f"cannot run {check.script_path}: {error.strerror}"
    try:
        output, _ = process.communicate(timeout=check.timeout_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return False, f"timed out after {check.timeout_seconds:g}s"
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip()[-300:]
        return False, f"exited with status {process.returncode}" + (f": {tail}" if tail else "")
    return True, "ok"


class Registrar:
    """One thread per route; `stop()` ends them and deregisters what is registered."""

    def __init__(self, config: Config, client: CopilotClient | None = None,
                 health_check: Callable[[HealthCheck], tuple[bool, str]] = run_health_check) -> None:
        self.config = config
        self.client = client or CopilotClient(config.copilot)
        self._health_check = health_check
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._registered: dict[str, list[dict]] = {}  # route name -> what was last registered
        self._threads: list[threading.Thread] = []
        self.cycles: dict[str, int] = {route.name: 0 for route in config.routes}

    def start(self) -> None:
        for route in self.config.routes:
            thread = threading.Thread(target=self._loop, args=(route,), name=f"route-{route.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("registering %d routes for %s with %d Copilot(s)", len(self.config.routes), self.config.address,
                 len(self.config.copilot.addresses))

    def registered(self) -> dict[str, list[dict]]:
        with self._lock:
            return dict(self._registered)

    def stop(self, join_timeout: float = 10.0) -> None:
        """Stops the loops, then deregisters every route that is registered."""
        self._stop.set()
        deadline = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            registered, self._registered = self._registered, {}
        items = [item for route_items in registered.values() for item in route_items]
        if items:
            errors = self.client.send("DELETE", items)
            for error in errors:
                log.error("deregistering on stop: %s", error)
            log.info("deregistered %d uris on stop", len(items))

    def _loop(self, route: Route) -> None:
        items = registrations(route, self.config)
        healthy_before: bool | None = None
        while not self._stop.is_set():
            healthy, reason = True, "no health check"
            if route.health_check is not None:
                healthy, reason = self._health_check(route.health_check)
            if self._stop.is_set():
                break
            if healthy != healthy_before:
                level = logging.INFO if healthy else logging.WARNING
                log.log(level, "route %s is %s (%s)", route.name, "healthy" if healthy else "unhealthy", reason)
            self._register(route, items) if healthy else self._deregister(route, items)
            healthy_before = healthy
            self.cycles[route.name] += 1
            self._stop.wait(route.registration_interval_seconds)

    def _register(self, route: Route, items: list[dict]) -> None:
        errors = self.client.send("POST", items)
        for error in errors:
            log.error("registering route %s: %s", route.name, error)
        if len(errors) < len(self.config.copilot.addresses):
            with self._lock:  # recorded even while stopping: stop() joins this thread, then deregisters it
                self._registered[route.name] = items

    def _deregister(self, route: Route, items: list[dict]) -> None:
        # Sent on every unhealthy interval (DELETE is idempotent), so a Copilot that missed one still learns it.
        errors = self.client.send("DELETE", items)
        for error in errors:
            log.error("deregistering unhealthy route %s: %s", route.name, error)
        with self._lock:
            self._registered.pop(route.name, None)


def describe(config: Config) -> Sequence[str]:
    """One line per registration this VM makes, for --check."""
    lines = []
    for route in config.routes:
        for item in registrations(route, config):
            if "tls_port" in item:
                port = f"tls_port {item['tls_port']} ({item['server_cert_domain_san']})"
            else:
                port = f"port {item['port']}"
            check = f", health check {route.health_check.name}" if route.health_check else ""
            lines.append(f"{item['host']}{item['path']} -> {config.address} {port} every "
                         f"{route.registration_interval_seconds:g}s{check}")
    return lines
