"""Every template of every job renders with default and non-default properties into configs of the
right shape; missing required properties fail with their names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from release_helpers import (
    ALL_JOBS,
    JOBS,
    copilot_link,
    copilot_properties,
    load_spec,
    pilot_link,
    registrar_properties,
    render,
    smoke_properties,
)

from bosh_render import RenderError

ROUTE = {"name": "a", "port": 1, "uris": ["a.b"]}


def pilot_tls(pki, **overrides) -> dict:
    """istio-router's pilot_tls: the CA of istiod's certificate and the router's client certificate."""
    return {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key, **overrides}


def secure_pilot_link(pki, properties: dict | None = None, **kwargs) -> dict:
    """The pilot link of a pilot-discovery serving its secure xDS port (tls.* set)."""
    return pilot_link({"tls": {"cert": pki.server.cert}, **(properties or {})}, **kwargs)


def cases(pki) -> dict[str, dict[str, tuple[dict, dict]]]:
    """job -> case name -> (properties, links): defaults (only what is required) and non-defaults."""
    return {
        "copilot": {
            "defaults": (copilot_properties(pki), {}),
            "custom": (copilot_properties(
                pki,
                bbs={"url": "https://bbs.example:8889", "reconcile_interval_seconds": 5, "max_backoff_seconds": 2},
                mcp={"listen_address": "0.0.0.0:9009", "tls": {"cert": pki.server.cert, "key": pki.server.key}},
                health={"listen_address": "0.0.0.0:8788"},
                gateway={"namespace": "cf", "name": "gw", "selector": {"istio": "ingress"}, "http_port": 8081},
                cc={"enabled": True, "listen_address": "0.0.0.0:9002", "server_cert": pki.server.cert,
                    "server_key": pki.server.key, "client_ca_cert": pki.ca, "bulk_sync_hold_seconds": 0},
                registrar={"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key,
                           "client_ca_cert": pki.ca},
                log_level="debug",
            ), {}),
        },
        "pilot-discovery": {
            "defaults": ({}, {"copilot": copilot_link()}),
            "custom": ({
                "grpc_address": "127.0.0.2", "grpc_port": 15011, "http_port": 18080, "monitoring_address": "0.0.0.0",
                "secure_grpc_address": "10.0.0.1", "secure_grpc_port": 15013,
                "tls": {"cert": pki.server.cert, "key": pki.server.key, "ca_cert": pki.ca},
                "copilot_tls": {"ca_cert": pki.ca, "sni": "copilot.service.cf.internal"},
                "cluster_id": "cf", "root_namespace": "cf-root", "pod_namespace": "cf", "debounce_after": "10ms",
                "log_output_level": "default:debug", "copilot_wait_seconds": 5,
            }, {"copilot": copilot_link(
                {"mcp": {"listen_address": "0.0.0.0:9009", "tls": {"cert": pki.server.cert}}},
                address="copilot.service.cf.internal",
            )}),
        },
        "istio-router": {
            "defaults": ({"pilot_tls": pilot_tls(pki)}, {"pilot": secure_pilot_link(pki)}),
            "custom": ({
                "pilot_tls": pilot_tls(pki, server_name="pilot.example"),
                "namespace": "cf", "labels": {"istio": "ingress", "zone": "a"}, "istio_version": "1.30.3",
                "admin_port": 19000, "health": {"port": 8002, "path": "/healthz"}, "drain": {"seconds": 3},
                "log_level": "debug", "concurrency": 2,
                "sds": {"listen_address": "127.0.0.1:15090", "certificates": [
                    {"name": "apps", "cert_chain": pki.server.cert, "private_key": pki.server.key},
                ]},
            }, {"pilot": secure_pilot_link(pki, {"grpc_port": 15011, "secure_grpc_port": 15013, "cluster_id": "cf"},
                                           addresses=("pilot-0.example", "pilot-1.example")),
                "copilot": copilot_link()}),
        },
        "istio-route-registrar": {
            "defaults": (registrar_properties(pki), {"copilot": copilot_link({"registrar": {"enabled": True}})}),
            "custom": (registrar_properties(
                pki, host="10.0.9.9", ttl_intervals=5, log_level="debug",
                copilot={"addresses": ["10.0.1.1", "10.0.2.1"], "port": 9443, "server_name": "copilot.example"},
                route_registrar={"routes": [{
                    "name": "uaa", "tls_port": 8443, "server_cert_domain_san": "uaa.service.cf.internal",
                    "registration_interval": "1m30s", "uris": ["uaa.sys.example.com", "login.sys.example.com/oauth"],
                    "prepend_instance_index": True, "tags": {"component": "uaa"},
                    "health_check": {"name": "uaa-health", "script_path": "/var/vcap/jobs/uaa/bin/dns/healthy",
                                     "timeout": "500ms"},
                }]},
            ), {}),
        },
        "istio-smoke-tests": {
            "defaults": (smoke_properties(), {}),
            "custom": (smoke_properties(cf={"skip_ssl_validation": True, "admin_user": "o'brien"},
                                        router_endpoint="10.0.0.9:80", timeout_seconds=30), {}),
        },
    }


@pytest.mark.parametrize("case", ["defaults", "custom"])
@pytest.mark.parametrize("job", ALL_JOBS)
def test_every_template_renders(job, case, pki, tmp_path):
    properties, links = cases(pki)[job][case]
    rendered = render(job, properties, tmp_path, links=links)
    assert set(rendered) == set(load_spec("job", job)["templates"].values())
    for destination, path in rendered.items():
        text = path.read_text()
        if destination.endswith((".yml", ".yaml")):
            assert isinstance(yaml.safe_load(text), dict), destination
        elif destination.endswith(".json"):
            json.loads(text)
        elif destination.startswith("bin/"):
            assert text.startswith("#!/usr/bin/env bash\n"), destination


def test_cases_cover_every_job(pki):
    assert set(cases(pki)) == set(ALL_JOBS)


@pytest.mark.parametrize("job", ALL_JOBS)
def test_spec_documents_every_property(job):
    spec = load_spec("job", job)
    for name, declaration in (spec.get("properties") or {}).items():
        assert isinstance(declaration, dict) and declaration.get("description"), f"{job}: {name} has no description"
    for template in spec["templates"]:
        assert (JOBS / job / "templates" / template).is_file()
    assert (JOBS / job / "monit").is_file()


@pytest.mark.parametrize("job", [j for j in ALL_JOBS if j != "istio-smoke-tests"])
@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_bpm_processes_run_the_jobs_own_packages(job, case, pki, tmp_path):
    properties, links = cases(pki)[job][case]
    bpm = yaml.safe_load(render(job, properties, tmp_path, links=links)["config/bpm.yml"].read_text())
    packages = load_spec("job", job)["packages"]
    monit = (JOBS / job / "monit").read_text()
    for process in bpm["processes"]:
        package = process["executable"].split("/")[4]
        assert process["executable"].startswith("/var/vcap/packages/") and package in packages
        assert all(isinstance(arg, str) for arg in process.get("args", []))
        assert all(isinstance(v, str) for v in process.get("env", {}).values())
        assert f"/var/vcap/sys/run/bpm/{job}/{process['name']}.pid" in monit


@pytest.mark.parametrize(("job", "drop", "missing"), [
    ("copilot", "bbs.ca_cert", "bbs.ca_cert"),
    ("copilot", "bbs.client_key", "bbs.client_key"),
    ("istio-smoke-tests", "cf.api_url", "cf.api_url"),
    ("istio-smoke-tests", "cf.admin_password", "cf.admin_password"),
])
def test_missing_required_property_fails_with_its_name(job, drop, missing, pki, tmp_path):
    properties, links = cases(pki)[job]["defaults"]
    section, key = drop.split(".")
    properties = {**properties, section: {k: v for k, v in properties[section].items() if k != key}}
    with pytest.raises(RenderError, match=f"Can't find property '{missing}'"):
        render(job, properties, tmp_path, links=links)


@pytest.mark.parametrize(("job", "properties", "links", "message"), [
    ("copilot", {"registrar": {"enabled": True, "server_cert": "C", "server_key": "K"}}, {},
     "registrar.client_ca_cert: is required"),
    ("copilot", {"registrar": {"enabled": True, "server_cert": "C", "server_key": "K", "client_ca_cert": "CA",
                               "listen_address": "0.0.0.0:9001"},
                 "cc": {"enabled": True, "server_cert": "C", "server_key": "K", "client_ca_cert": "CA"}}, {},
     "registrar.listen_address: 0.0.0.0:9001 uses the port of cc.listen_address"),
    ("istio-route-registrar", {"route_registrar": {"routes": [{"name": "a", "port": 1, "uris": ["a.b"],
                                                               "registration_interval": "10"}]}}, {},
     r'registration_interval: "10" is not a duration'),
    ("istio-route-registrar", {"route_registrar": {"routes": [{"name": "a", "tls_port": 1, "uris": ["a.b"],
                                                               "registration_interval": "10s"}]}}, {},
     "server_cert_domain_san: is required with tls_port"),
    ("istio-route-registrar", {"route_registrar": {"routes": [{**ROUTE, "registration_interval": "10s",
                                                               "route_service_url": "https://rs.example.com"}]}}, {},
     "route_service_url: route services are not supported"),
    ("istio-route-registrar", {"route_registrar": {"routes": [{**ROUTE, "registration_interval": "10s",
                                                               "type": "tcp", "external_port": 1024}]}}, {},
     "TCP routes"),
    ("istio-route-registrar", {"route_registrar": {"routes": [{**ROUTE, "registration_interval": "4s",
                                                               "health_check": {"name": "h", "script_path": "/x",
                                                                                "timeout": "4s"}}]}},
     {}, "health_check.timeout: must be less than registration_interval"),
    ("istio-route-registrar", {}, {"copilot": {"registrar": {"enabled": False}}}, "Copilot's registrar API is off"),
    ("istio-route-registrar", {}, {"copilot": {"registrar": {"enabled": True, "listen_address": "127.0.0.1:9001"}}},
     "is loopback"),
    ("copilot", {"mcp": {"tls": {"cert": "CERT"}}}, {}, "mcp.tls.key: is required when mcp.tls.cert is set"),
    ("copilot", {"cc": {"enabled": True, "server_cert": "C", "server_key": "K"}}, {}, "cc.client_ca_cert: is required"),
    ("copilot", {"log_level": "loud"}, {}, "log_level: \"loud\" is not one of"),
    ("copilot", {"mcp": {"listen_address": "nohost"}}, {}, "mcp.listen_address: \"nohost\" must be host:port"),
    ("pilot-discovery", {"tls": {"cert": "C"}}, {}, "tls.key, tls.ca_cert: required when tls.cert is set"),
    ("pilot-discovery", {}, {"copilot": {"mcp": {"listen_address": "127.0.0.1:1", "tls": {"cert": "C"}}}},
     "copilot_tls.ca_cert: required"),
    ("istio-router", {"sds": {"certificates": [{"name": "x"}]}}, {}, r"sds.certificates\[0\]: needs name, cert_chain"),
    ("istio-router", {"stats": {"excluded_cluster_stats": [""]}}, {}, "stats.excluded_cluster_stats: must be a list"),
    ("istio-router", {"memory": {"release_bytes_per_second": -1}}, {}, "memory.release_bytes_per_second: must be"),
])
def test_invalid_combinations_fail_with_the_property_name(job, properties, links, message, pki, tmp_path):
    base, base_links = cases(pki)[job]["defaults"]
    if "copilot" in links:
        links = {"copilot": {"properties": links["copilot"], "instances": [{"address": "10.0.0.1"}]}}
    with pytest.raises(RenderError, match=message):
        render(job, {**base, **properties}, tmp_path, links={**base_links, **links})


def test_missing_pilot_link_is_an_error(tmp_path):
    with pytest.raises(RenderError, match="consumes link 'pilot'"):
        render("istio-router", {}, tmp_path)


# --- what the rendered configs say -------------------------------------------------------------


def test_copilot_config_from_properties(pki, tmp_path):
    properties, _ = cases(pki)["copilot"]["custom"]
    rendered = render("copilot", properties, tmp_path)
    config = yaml.safe_load(rendered["config/copilot.yml"].read_text())
    assert config["mcp"] == {"listen": "0.0.0.0:9009", "tls": {"cert": "/var/vcap/jobs/copilot/config/certs/mcp/server.crt",
                                                               "key": "/var/vcap/jobs/copilot/config/certs/mcp/server.key"},
                             "service_removal_delay_seconds": 30}
    assert config["gateway"] == {"namespace": "cf", "name": "gw", "selector": {"istio": "ingress"}, "http_port": 8081,
                                 "router_shards": [{"name": "all", "routing_table_sharding_mode": "all",
                                                    "isolation_segments": []}],
                                 "tls_min_version": "1.2", "sticky_session_cookies": ["JSESSIONID"], "instance_routing": False,
                                 "enable_http2": True, "trusted_proxy_hops": 0,
                                 "certificate_dir": "/var/vcap/jobs/istio-router/config/certs",
                                 "outlier_detection": {"consecutive_failures": 3, "base_ejection_seconds": 30,
                                                       "max_ejection_percent": 100, "min_health_percent": 1}}
    assert config["cc"]["listen"] == "0.0.0.0:9002"
    assert rendered["config/certs/bbs/ca.crt"].read_text().strip() == pki.ca.strip()
    assert rendered["config/certs/mcp/server.key"].read_text().strip() == pki.server.key.strip()


def test_pilot_mesh_config_follows_the_copilot_link(pki, tmp_path):
    def mesh_of(properties: dict, out: Path, links: dict) -> dict:
        return yaml.safe_load(render("pilot-discovery", properties, out, links=links)["config/mesh.yml"].read_text())

    mesh = mesh_of({}, tmp_path / "a", {"copilot": copilot_link()})
    assert mesh == {
        "configSources": [{"address": "xds://127.0.0.1:15030"}], "rootNamespace": "istio-system", "enableAutoMtls": False,
        "enableTracing": False,
    }
    properties, links = cases(pki)["pilot-discovery"]["custom"]
    mesh = mesh_of(properties, tmp_path / "b", links)
    assert mesh["configSources"] == [{
        "address": "xds://copilot.service.cf.internal:9009",
        "tlsSettings": {"mode": "SIMPLE", "caCertificates": "/var/vcap/jobs/pilot-discovery/config/certs/copilot_ca.crt",
                        "sni": "copilot.service.cf.internal"},
    }]
    override = {"copilot_address": "192.0.2.7:7000"}
    mesh = mesh_of(override, tmp_path / "c", {"copilot": copilot_link()})
    assert mesh["configSources"] == [{"address": "xds://192.0.2.7:7000"}]


def test_pilot_flags_and_env(pki, tmp_path):
    rendered = render("pilot-discovery", {}, tmp_path / "a", links={"copilot": copilot_link()})
    bpm = yaml.safe_load(rendered["config/bpm.yml"].read_text())
    process = bpm["processes"][0]
    assert process["args"][:2] == ["discovery", "--registries="]
    # No TLS material: the secure port is off and the plaintext one is on loopback, so istiod serves nobody else.
    assert "--secureGRPCAddr=" in process["args"] and "--grpcAddr=127.0.0.1:15010" in process["args"]
    # A router busy applying a large cluster set answers no ping: istiod's 10 s would drop it every time.
    assert "--keepaliveTimeout=5m" in process["args"]
    assert process["env"] == {
        "ENABLE_CA_SERVER": "false", "XDS_AUTH": "true", "PILOT_ENABLE_XDS_IDENTITY_CHECK": "false",
        "PILOT_ENABLE_ALPN_FILTER": "false", "PILOT_ENABLE_METADATA_EXCHANGE": "false",
        "PILOT_ENABLE_TELEMETRY_LABEL": "false", "PILOT_ENDPOINT_TELEMETRY_LABEL": "false",
        "POD_NAMESPACE": "istio-system", "PILOT_DEBOUNCE_AFTER": "100ms", "PILOT_DEBOUNCE_MAX": "10s",
        # An instance starting or stopping reaches the routers without waiting for the debounce.
        "PILOT_ENABLE_EDS_DEBOUNCE": "false",
        # A router's EDS request names every cluster: 4 MiB (istiod's default) is too small at 100,000 hosts.
        "ISTIO_GPRC_MAXRECVMSGSIZE": "33554432",
        "GOGC": "100",
    }
    assert process["hooks"]["pre_start"] == "/var/vcap/jobs/pilot-discovery/bin/wait-for-copilot"
    env = yaml.safe_load(render("pilot-discovery", {"eds_debounce": True}, tmp_path / "d", links={"copilot": copilot_link()})[
        "config/bpm.yml"].read_text())["processes"][0]["env"]
    assert env["PILOT_ENABLE_EDS_DEBOUNCE"] == "true"
    properties, links = cases(pki)["pilot-discovery"]["custom"]
    args = yaml.safe_load(render("pilot-discovery", properties, tmp_path / "b", links=links)["config/bpm.yml"].read_text())[
        "processes"][0]["args"]
    certs = "/var/vcap/jobs/pilot-discovery/config/certs"
    for flag in ("--secureGRPCAddr=10.0.0.1:15013", f"--tlsCertFile={certs}/tls.crt", f"--tlsKeyFile={certs}/tls.key",
                 f"--caCertFile={certs}/ca.crt", "--clusterID=cf", "--grpcAddr=127.0.0.2:15011"):
        assert flag in args


def test_pilot_keepalive_timeout_must_be_a_positive_go_duration(tmp_path):
    for n, good in enumerate(("90s", "1m30s", "2h")):
        args = yaml.safe_load(render("pilot-discovery", {"keepalive_timeout": good}, tmp_path / f"ok{n}",
                                     links={"copilot": copilot_link()})["config/bpm.yml"].read_text())["processes"][0]["args"]
        assert f"--keepaliveTimeout={good}" in args
    for n, bad in enumerate(("300", "0s", "5 m", "-1m", "")):
        with pytest.raises(Exception, match="keepalive_timeout: .* is not a positive Go duration"):
            render("pilot-discovery", {"keepalive_timeout": bad}, tmp_path / f"bad{n}", links={"copilot": copilot_link()})


def test_pilot_gc_percent_is_istiods_gogc_and_must_be_a_whole_number(tmp_path):
    def env(properties, where):
        bpm = render("pilot-discovery", properties, tmp_path / where, links={"copilot": copilot_link()})["config/bpm.yml"]
        return yaml.safe_load(bpm.read_text())["processes"][0]["env"]

    assert env({}, "default")["GOGC"] == "100"  # Go's own default, written out
    assert env({"gc_percent": 400}, "raised")["GOGC"] == "400"
    for n, bad in enumerate((0, 10, "200", 150.5, "off")):
        with pytest.raises(Exception, match="gc_percent: .* must be a whole number of at least 25"):
            env({"gc_percent": bad}, f"bad{n}")


def test_pilot_plaintext_xds_listens_on_loopback_only(pki, tmp_path):
    """istiod's plaintext port (15010) authenticates nobody: by default and with TLS it binds loopback, and a
    non-loopback grpc_address does not render. Only the secure port (mutual TLS) listens beyond loopback."""
    tls = {"tls": {"cert": pki.server.cert, "key": pki.server.key, "ca_cert": pki.ca}}
    for name, properties in {"defaults": {}, "tls": tls, "ipv6": {"grpc_address": "::1"}}.items():
        rendered = render("pilot-discovery", properties, tmp_path / name, links={"copilot": copilot_link()})
        args = yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"][0]["args"]
        [grpc] = [a for a in args if a.startswith("--grpcAddr=")]
        assert grpc in ("--grpcAddr=127.0.0.1:15010", "--grpcAddr=[::1]:15010"), (name, grpc)
        if name == "tls":
            assert "--secureGRPCAddr=0.0.0.0:15012" in args
        for flag in ("--httpAddr=", "--monitoringAddr=", "--ctrlz_address="):
            [value] = [a for a in args if a.startswith(flag)]
            assert value.removeprefix(flag).startswith("127.0.0.1"), value
    for address in ("0.0.0.0", "10.0.0.1", "::", "istiod.example.com"):
        with pytest.raises(RenderError, match=f"grpc_address: {address} is not a loopback address"):
            render("pilot-discovery", {"grpc_address": address}, tmp_path / "bad", links={"copilot": copilot_link()})


def test_router_bootstrap_node_and_xds_endpoints(pki, tmp_path):
    links = {"pilot": secure_pilot_link(pki, addresses=("10.0.1.1", "10.0.1.2", "10.0.1.3"))}
    rendered = render("istio-router", {"pilot_tls": pilot_tls(pki)}, tmp_path / "a", links=links,
                      spec={"ip": "10.0.2.7", "index": 1})
    bootstrap = json.loads(rendered["config/envoy.json"].read_text())
    assert bootstrap["node"]["id"] == "router~10.0.2.7~istio-router-1.istio-system~istio-system.svc.cluster.local"
    assert bootstrap["node"]["metadata"] == {"NAMESPACE": "istio-system",
                                             "LABELS": {"app": "istio-router", "routing.cloudfoundry.org/shard": "all"},
                                             "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "10.0.2.7", "ISTIO_VERSION": "1.30.0"}
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    xds = clusters["xds-grpc"]
    assert xds["type"] == "STATIC"
    assert [e["endpoint"]["address"]["socket_address"] for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]] == [
        {"address": a, "port_value": 15012} for a in ("10.0.1.1", "10.0.1.2", "10.0.1.3")]  # istiod's secure port
    assert clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": "/var/vcap/data/istio-router/sds/sds.sock"}}
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    # Incremental xDS: a full push sends the router the clusters that changed, not every cluster again.
    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    sotw = render("istio-router", {"pilot_tls": pilot_tls(pki), "xds_delta": False}, tmp_path / "b", links=links)
    assert json.loads(sotw["config/envoy.json"].read_text())["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    bpm = yaml.safe_load(rendered["config/bpm.yml"].read_text())
    envoy = bpm["processes"][0]
    assert envoy["capabilities"] == ["NET_BIND_SERVICE"] and envoy["ephemeral_disk"] is True
    assert [p["name"] for p in bpm["processes"]] == ["envoy", "sds"]


def test_router_keeps_fewer_statistics_for_istiods_clusters_and_gives_freed_memory_back(pki, tmp_path):
    import re

    links = {"pilot": secure_pilot_link(pki)}
    bootstrap = json.loads(render("istio-router", {"pilot_tls": pilot_tls(pki)}, tmp_path / "a", links=links)[
        "config/envoy.json"].read_text())
    [pattern] = bootstrap["stats_config"]["stats_matcher"]["exclusion_list"]["patterns"]
    excluded = re.compile(pattern["safe_regex"]["regex"])  # Envoy matches the whole name (RE2; this one is plain)
    app = "cluster.outbound|8443||a.example.com;."
    for name in ("circuit_breakers.default.cx_open", "lb_zone_routing_sampled", "ssl.ocsp_staple_requests",
                 "outlier_detection.ejections_detected_consecutive_5xx", "upstream_cx_length_ms"):
        assert excluded.fullmatch(app + name), name
    for name in ("upstream_rq_total", "upstream_rq_503", "upstream_cx_connect_fail", "ssl.fail_verify_san",
                 "outlier_detection.ejections_active", "outlier_detection.ejections_enforced_total",
                 "update_rejected", "membership_healthy", "lb_healthy_panic"):
        assert not excluded.fullmatch(app + name), name
    assert not excluded.fullmatch("cluster.xds-grpc.circuit_breakers.default.cx_open")  # static clusters keep all
    assert bootstrap["memory_allocator_manager"] == {"bytes_to_release": 104857600, "memory_release_interval": "1s"}
    assert bootstrap["deferred_stat_options"] == {"enable_deferred_creation_stats": True}
    assert bootstrap["cluster_manager"] == {"enable_deferred_cluster_creation": True}

    props = {"pilot_tls": pilot_tls(pki), "stats": {"excluded_cluster_stats": []}, "memory": {"release_bytes_per_second": 0},
             "deferred_cluster_creation": False}
    bootstrap = json.loads(render("istio-router", props, tmp_path / "b", links=links)["config/envoy.json"].read_text())
    assert bootstrap["stats_config"] == {"stats_matcher": {"reject_all": False}}
    assert "memory_allocator_manager" not in bootstrap and "cluster_manager" not in bootstrap
    props["stats"]["deferred_creation"] = False
    bootstrap = json.loads(render("istio-router", props, tmp_path / "c", links=links)["config/envoy.json"].read_text())
    assert bootstrap["deferred_stat_options"] == {"enable_deferred_creation_stats": False}


def test_router_takes_namespace_and_labels_from_the_copilot_link_unless_set(pki, tmp_path):
    links = {"pilot": secure_pilot_link(pki, {"cluster_id": "cf"}),
             "copilot": copilot_link({"gateway": {"namespace": "routing", "selector": {"istio": "cf-router"}}})}
    tls = {"pilot_tls": pilot_tls(pki)}
    node = json.loads(render("istio-router", tls, tmp_path / "a", links=links)["config/envoy.json"].read_text())["node"]
    shard = {"routing.cloudfoundry.org/shard": "all"}
    assert node["metadata"]["NAMESPACE"] == "routing" and node["metadata"]["LABELS"] == {"istio": "cf-router", **shard}
    assert node["metadata"]["CLUSTER_ID"] == "cf" and node["id"].endswith("~routing.svc.cluster.local")
    node = json.loads(render("istio-router", {**tls, "namespace": "own", "labels": {"a": "b"}}, tmp_path / "b", links=links)[
        "config/envoy.json"].read_text())["node"]
    assert node["metadata"]["NAMESPACE"] == "own" and node["metadata"]["LABELS"] == {"a": "b", **shard}


def test_router_names_its_shard_in_its_labels_and_copilot_must_list_it(pki, tmp_path):
    shards = [{"name": "shared", "routing_table_sharding_mode": "shared-and-segments", "isolation_segments": []},
              {"name": "persistent_isolation_segment", "routing_table_sharding_mode": "segments",
               "isolation_segments": ["persistent_isolation_segment"]}]
    links = {"pilot": secure_pilot_link(pki), "copilot": copilot_link({"gateway": {"router_shards": shards}})}
    properties = {"pilot_tls": pilot_tls(pki), "router_shard": "persistent_isolation_segment"}
    node = json.loads(render("istio-router", properties, tmp_path / "a", links=links)["config/envoy.json"].read_text())["node"]
    assert node["metadata"]["LABELS"] == {"app": "istio-router", "routing.cloudfoundry.org/shard": "persistent_isolation_segment"}
    # The shard's Gateways select exactly what the router announces (Copilot's selector plus the label).
    from copilot.config import parse

    gateway = parse({"gateway": {"router_shards": shards}}).gateway
    assert gateway.shard_selector(1) == node["metadata"]["LABELS"]
    # A shard Copilot does not list (the default `all`, once shards are set) would serve nothing: refused.
    with pytest.raises(RenderError, match=r"router_shard: \"all\" is not one of the copilot link's gateway.router_shards"):
        render("istio-router", {"pilot_tls": pilot_tls(pki)}, tmp_path / "b", links=links)


def test_router_uses_dns_for_pilot_hostnames_and_tcp_for_a_port_sds(pki, tmp_path):
    properties, links = cases(pki)["istio-router"]["custom"]
    rendered = render("istio-router", properties, tmp_path, links=links)
    clusters = {c["name"]: c for c in json.loads(rendered["config/envoy.json"].read_text())["static_resources"]["clusters"]}
    assert clusters["xds-grpc"]["type"] == "STRICT_DNS"
    assert clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 15090}}
    sds = yaml.safe_load(rendered["config/sds.yml"].read_text())
    assert sds["listen"] == "127.0.0.1:15090"
    assert sds["certificates"] == [{"name": "apps", "certificate_chain": pki.server.cert, "private_key": pki.server.key}]
    assert yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"][0]["ephemeral_disk"] is False


def test_copilot_gateway_https_from_properties(pki, tmp_path):
    """The HTTPS server's certificates are named in the copilot job and held by the routers (sds)."""
    properties = copilot_properties(pki, gateway={
        "certificates": [{"name": "router-ssl", "hosts": ["*.sys.example.com"]}],
        "https_port": 8443, "tls_min_version": "1.3", "instance_routing": True,
    })
    rendered = render("copilot", properties, tmp_path)
    config = yaml.safe_load(rendered["config/copilot.yml"].read_text())
    assert config["gateway"]["certificates"] == [{"name": "router-ssl", "hosts": ["*.sys.example.com"]}]
    assert config["gateway"]["https_port"] == 8443
    assert config["gateway"]["certificate_dir"] == "/var/vcap/jobs/istio-router/config/certs"
    assert config["gateway"]["tls_min_version"] == "1.3" and config["gateway"]["instance_routing"] is True
    # Copilot's own loader accepts what the job rendered (certificate files live on the routers).
    from copilot.config import parse

    install_dir = tmp_path
    for path in rendered.values():
        path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(install_dir)))
    parse(yaml.safe_load(rendered["config/copilot.yml"].read_text()))


def test_copilot_gateway_http2_off_from_properties(pki, tmp_path):
    """gateway.enable_http2: false (istio-routing-disable-http2.yml) reaches Copilot's gateway settings."""
    from copilot.config import parse

    rendered = render("copilot", copilot_properties(pki, gateway={"enable_http2": False}), tmp_path)
    config = yaml.safe_load(rendered["config/copilot.yml"].read_text())
    assert config["gateway"]["enable_http2"] is False
    for path in rendered.values():
        path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path)))
    assert parse(yaml.safe_load(rendered["config/copilot.yml"].read_text())).gateway.enable_http2 is False


def test_router_sds_serves_the_upstream_ca_bundle_copilot_names(pki, tmp_path):
    """upstream_tls.ca_certs is written where Copilot's gateway.upstream_ca_file points, and router-sds
    serves that path (istiod asks for it as file-root:<path>)."""
    properties, links = cases(pki)["istio-router"]["defaults"]
    rendered = render("istio-router", {**properties, "upstream_tls": {"ca_certs": [pki.ca]}}, tmp_path, links=links)
    sds = yaml.safe_load(rendered["config/sds.yml"].read_text())
    assert sds["trusted_ca_files"] == ["/var/vcap/jobs/istio-router/config/certs/upstream_ca.crt"]
    assert pki.ca.strip() in rendered["config/certs/upstream_ca.crt"].read_text()
    without = yaml.safe_load(render("istio-router", properties, tmp_path / "none", links=links)["config/sds.yml"].read_text())
    assert "trusted_ca_files" not in without


def test_router_holds_the_instance_identity_ca_for_route_integrity(pki, tmp_path):
    properties, links = cases(pki)["istio-router"]["defaults"]
    rendered = render("istio-router", {**properties, "route_integrity": {"ca_cert": pki.ca}}, tmp_path, links=links)
    assert rendered["config/certs/instance_identity_ca.crt"].read_text().strip() == pki.ca.strip()
    sds = yaml.safe_load(rendered["config/sds.yml"].read_text())
    assert sds["trusted_ca_files"] == ["/var/vcap/jobs/istio-router/config/certs/instance_identity_ca.crt"]
    copilot = yaml.safe_load(render("copilot", copilot_properties(pki, gateway={
        "instance_identity_ca_file": "/var/vcap/jobs/istio-router/config/certs/instance_identity_ca.crt"}),
        tmp_path / "copilot")["config/copilot.yml"].read_text())
    assert copilot["gateway"]["instance_identity_ca_file"].endswith("instance_identity_ca.crt")


def test_router_serves_its_backend_client_certificate_under_the_name_copilot_gives(pki, tmp_path):
    """backends.cert_chain (cf-deployment: gorouter_backend_tls) is served as backend-client, the name
    Copilot's gateway.backend_client_certificate gives the instances' TLS policies."""
    properties, links = cases(pki)["istio-router"]["defaults"]
    backends = {"cert_chain": pki.client.cert, "private_key": pki.client.key}
    rendered = render("istio-router", {**properties, "backends": backends}, tmp_path, links=links)
    sds = yaml.safe_load(rendered["config/sds.yml"].read_text())
    [served] = [c for c in sds["certificates"] if c["name"] == "backend-client"]
    assert served["certificate_chain"] == pki.client.cert and served["private_key"] == pki.client.key
    copilot = yaml.safe_load(render("copilot", copilot_properties(pki, gateway={"backend_client_certificate": "backend-client"}),
                                    tmp_path / "copilot")["config/copilot.yml"].read_text())
    assert copilot["gateway"]["backend_client_certificate"] == "backend-client"
    assert copilot["gateway"]["certificate_dir"] == sds["file_cert_dir"]
    with pytest.raises(RenderError, match="backends.cert_chain and backends.private_key"):
        render("istio-router", {**properties, "backends": {"cert_chain": pki.client.cert}}, tmp_path / "half", links=links)


# --- xDS between the routers and istiod: mutual TLS only ------------------------------------------


def test_router_reaches_istiod_over_mutual_tls_on_the_secure_port(pki, tmp_path):
    """The xds-grpc cluster: TLS to the pilot link's secure port, istiod's certificate checked against
    pilot_tls.ca_cert and pilot_tls.server_name (SNI and SAN), the router's client certificate presented."""
    properties, links = cases(pki)["istio-router"]["custom"]
    rendered = render("istio-router", properties, tmp_path / "custom", links=links)
    clusters = {c["name"]: c for c in json.loads(rendered["config/envoy.json"].read_text())["static_resources"]["clusters"]}
    xds = clusters["xds-grpc"]
    assert {e["endpoint"]["address"]["socket_address"]["port_value"]
            for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]} == {15013}
    socket = xds["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    certs = "/var/vcap/jobs/istio-router/config/certs/pilot"
    assert context["@type"] == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    assert context["sni"] == "pilot.example"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificates"] == [{"certificate_chain": {"filename": f"{certs}/client.crt"},
                                           "private_key": {"filename": f"{certs}/client.key"}}]
    assert common["validation_context"] == {
        "trusted_ca": {"filename": f"{certs}/ca.crt"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "pilot.example"}}],
    }
    assert rendered["config/certs/pilot/ca.crt"].read_text().strip() == pki.ca.strip()
    assert rendered["config/certs/pilot/client.crt"].read_text().strip() == pki.client.cert.strip()
    assert rendered["config/certs/pilot/client.key"].read_text().strip() == pki.client.key.strip()
    assert "transport_socket" not in clusters["sds-grpc"]  # router-sds is the job's own, on a private socket

    defaults, default_links = cases(pki)["istio-router"]["defaults"]
    context = next(c for c in json.loads(render("istio-router", defaults, tmp_path / "defaults", links=default_links)[
        "config/envoy.json"].read_text())["static_resources"]["clusters"] if c["name"] == "xds-grpc")["transport_socket"]
    assert context["typed_config"]["sni"] == "istiod.service.cf.internal"


@pytest.mark.parametrize(("given", "message"), [
    (lambda pki: None, "pilot_tls.ca_cert, pilot_tls.client_cert, pilot_tls.client_key: required"),
    (lambda pki: {"ca_cert": pki.ca}, "pilot_tls.client_cert, pilot_tls.client_key: required"),
    (lambda pki: pilot_tls(pki, ca_cert="not a pem"), "pilot_tls.ca_cert: must be a PEM certificate"),
    (lambda pki: pilot_tls(pki, client_key="not a pem"), "pilot_tls.client_key: must be a PEM private key"),
    (lambda pki: pilot_tls(pki, server_name=""), "pilot_tls.server_name: must not be empty"),
])
def test_router_without_its_istiod_tls_does_not_render(given, message, pki, tmp_path):
    properties = {} if given(pki) is None else {"pilot_tls": given(pki)}
    with pytest.raises(RenderError, match=message):
        render("istio-router", properties, tmp_path, links={"pilot": secure_pilot_link(pki)})


def test_router_refuses_a_pilot_without_its_secure_port(pki, tmp_path):
    """A pilot-discovery without tls.* serves xDS on loopback only: no router elsewhere could reach it."""
    with pytest.raises(RenderError, match="link pilot: istiod serves no secure xDS port"):
        render("istio-router", {"pilot_tls": pilot_tls(pki)}, tmp_path, links={"pilot": pilot_link()})


def test_pilot_link_carries_the_secure_port(pki):
    link = secure_pilot_link(pki, {"secure_grpc_port": 16012})
    assert link["properties"]["secure_grpc_port"] == 16012 and link["properties"]["tls"]["cert"] == pki.server.cert
