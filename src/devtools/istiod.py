"""Running a real istiod (pilot-discovery) without Kubernetes, fed by Copilot over MCP-over-xDS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from devtools import peers
from devtools.ports import free_port, wait_for_port
from devtools.processes import ManagedProcess

# The environment that makes istiod work with no Kubernetes and a plain upstream Envoy.
ISTIOD_ENV = {
    "ENABLE_CA_SERVER": "false",
    "PILOT_ENABLE_ALPN_FILTER": "false",
    "PILOT_ENABLE_METADATA_EXCHANGE": "false",
    "POD_NAMESPACE": "istio-system",
}


# One line per request, gorouter's access log fields in gorouter's order, written by the router's Envoy
# (istiod puts it on every listener). The pilot-discovery job's access_log.format default is this text;
# tests/release/test_access_log_config.py keeps them equal. X-CF-* and the upstream come from the
# instance the request went to (the cf-router EnvoyFilter's upstream filters), so a request answered by
# the router itself (404 unknown route) logs "-" there.
ACCESS_LOG_FORMAT = (
    '%REQ(:AUTHORITY)% - [%START_TIME(%Y-%m-%dT%T.%3f%z)%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% "%REQ(REFERER)%" "%REQ(USER-AGENT)%" "%DOWNSTREAM_REMOTE_ADDRESS%" '
    '"%UPSTREAM_HOST%" x_forwarded_for:"%REQ(X-FORWARDED-FOR)%" x_forwarded_proto:"%REQ(X-FORWARDED-PROTO)%" '
    'vcap_request_id:"%REQ(X-REQUEST-ID)%" response_time_ms:%DURATION% app_id:"%REQ(X-CF-APPLICATIONID)%" '
    'app_index:"%REQ(X-CF-INSTANCEINDEX)%" instance_id:"%REQ(X-CF-INSTANCEID)%" x_cf_routererror:"%RESP(X-CF-ROUTERERROR)%" '
    'response_flags:"%RESPONSE_FLAGS%"\n'
)


def mesh_config(copilot_mcp: str, *, access_log_file: str = "/dev/stdout") -> dict:
    # Auto mTLS would make every cluster wait for an Istio workload certificate over SDS, which a
    # router without pilot-agent never gets: the clusters stay warming and no listener arrives.
    mesh = {
        "configSources": [{"address": f"xds://{copilot_mcp}"}],
        "rootNamespace": "istio-system",
        "enableAutoMtls": False,
    }
    if access_log_file:
        mesh.update(accessLogFile=access_log_file, accessLogEncoding="TEXT", accessLogFormat=ACCESS_LOG_FORMAT)
    return mesh


@dataclass
class Istiod:
    process: ManagedProcess
    grpc_port: int
    http_port: int
    monitoring_port: int


def start_istiod(workdir: Path, copilot_mcp: str, *, debounce_after: str = "10ms") -> Istiod:
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = workdir / "mesh.yaml"
    mesh.write_text(yaml.safe_dump(mesh_config(copilot_mcp)))
    grpc_port, http_port, monitoring_port, ctrlz_port = (free_port() for _ in range(4))
    argv = [
        str(peers.pilot_discovery()),
        "discovery",
        "--registries=",
        f"--meshConfig={mesh}",
        f"--grpcAddr=127.0.0.1:{grpc_port}",
        f"--httpAddr=127.0.0.1:{http_port}",
        f"--monitoringAddr=127.0.0.1:{monitoring_port}",
        "--secureGRPCAddr=",
        f"--ctrlz_port={ctrlz_port}",
        "--ctrlz_address=127.0.0.1",
    ]
    env = {**ISTIOD_ENV, "PILOT_DEBOUNCE_AFTER": debounce_after}
    process = ManagedProcess("istiod", argv, workdir / "istiod.log", env).start()
    return Istiod(process, grpc_port, http_port, monitoring_port)


def wait_ready(istiod: Istiod, timeout: float = 60.0) -> None:
    """istiod opens its xDS port only once every config source has synced."""
    if not wait_for_port(istiod.grpc_port, timeout=timeout):
        raise RuntimeError(f"istiod did not open its xDS port within {timeout}s:\n{istiod.process.log_tail()}")
