"""Running a plain upstream Envoy as the Istio router, talking ADS to istiod directly (no pilot-agent)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import requests

from devtools import peers
from devtools.ports import free_port, wait_for_port
from devtools.processes import ManagedProcess

_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def sds_cluster(listen: str) -> dict:
    """The `sds-grpc` cluster istiod's TLS listeners get their certificates from (router_sds), as the
    istio-router job's envoy.json.erb writes it: unix:///path -> a pipe, host:port -> a socket address."""
    if listen.startswith("unix:"):
        address = {"pipe": {"path": "/" + listen.removeprefix("unix:").lstrip("/")}}
    else:
        host, _, port = listen.rpartition(":")
        address = {"socket_address": {"address": host, "port_value": int(port)}}
    return {
        "name": "sds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
    }


def router_bootstrap(
    *, router_ip: str, istiod_port: int, admin_port: int, labels: dict[str, str], namespace: str, sds_listen: str = ""
) -> dict:
    bootstrap = {
        "node": {
            "id": f"router~{router_ip}~istio-router-0.{namespace}~{namespace}.svc.cluster.local",
            "cluster": "istio-router",
            "metadata": {
                "NAMESPACE": namespace,
                "LABELS": labels,
                "CLUSTER_ID": "Kubernetes",
                "INSTANCE_IPS": router_ip,
                "ISTIO_VERSION": "1.30.0",
            },
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": istiod_port}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": _HTTP2_OPTIONS,
                }
            ]
        },
    }
    if sds_listen:
        bootstrap["static_resources"]["clusters"].append(sds_cluster(sds_listen))
    return bootstrap


@dataclass
class Envoy:
    process: ManagedProcess
    admin_port: int

    def config_dump(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.admin_port}/config_dump", timeout=5).json()

    def listeners(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.admin_port}/listeners", timeout=5).text


def start_envoy(
    workdir: Path,
    istiod_port: int,
    *,
    router_ip: str = "127.0.0.2",
    labels: dict[str, str] | None = None,
    namespace: str = "istio-system",
    sds_listen: str = "",
) -> Envoy:
    workdir.mkdir(parents=True, exist_ok=True)
    admin_port = free_port()
    bootstrap = workdir / "envoy.json"
    bootstrap.write_text(
        json.dumps(
            router_bootstrap(
                router_ip=router_ip,
                istiod_port=istiod_port,
                admin_port=admin_port,
                labels=labels or {"app": "istio-router"},
                namespace=namespace,
                sds_listen=sds_listen,
            ),
            indent=1,
        )
    )
    argv = [
        str(peers.envoy()),
        "-c",
        str(bootstrap),
        "--base-id",
        str(admin_port),
        "--log-level",
        "warning",
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "2",
    ]
    process = ManagedProcess("envoy", argv, workdir / "envoy.log").start()
    if not wait_for_port(admin_port, timeout=30):
        raise RuntimeError(f"envoy admin did not come up:\n{process.log_tail()}")
    return Envoy(process, admin_port)
