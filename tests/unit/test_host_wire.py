"""The common host's VirtualService and the common service's objects written as wire bytes
(copilot.istio.host_wire) are byte for byte what the builder's messages serialize to, for varied hosts
and settings; other hosts and services are left to the builder."""

from __future__ import annotations

from dataclasses import replace

import pytest

from copilot import invalid_input
from copilot.istio.builder import build_host, build_host_parts, build_service
from copilot.istio.host_wire import (
    build_host_encoded,
    build_service_encoded,
    encode_common_host,
    encode_host_parts,
    encode_service,
)
from copilot.istio.kinds import EncodedObject, IstioObject
from copilot.model import PLATFORM_PROCESS_PREFIX, Backend, Destination, HostRoutes, InvalidRoute
from copilot.settings import GatewaySettings, OutlierDetection, RouteServiceSettings
from copilot.xds.store import serialize

SETTINGS = {
    "defaults": GatewaySettings(),
    "named": GatewaySettings(namespace="cf-routing-" + "n" * 130, name="ingress"),
    "no-outlier": GatewaySettings(outlier_detection=OutlierDetection(0)),
    "outlier": GatewaySettings(outlier_detection=OutlierDetection(7, 45.5, 30, 10)),
    "integrity": GatewaySettings(instance_identity_ca_file="/ca/identity.pem", backend_client_certificate="client"),
    "integrity-no-client-cert": GatewaySettings(instance_identity_ca_file="/ca/identity.pem", certificate_dir="/c/"),
    "http2-off": GatewaySettings(enable_http2=False),
    "route-services-on": GatewaySettings(route_services=RouteServiceSettings()),
}
LONG_LABEL = "l" * 60
LONG_HOST = ".".join([LONG_LABEL] * 3) + ".example.com"  # over 127 bytes: two-byte lengths


def backends(count: int, *, base_port: int = 61000, zone: str = "z1") -> list[Backend]:
    """Varied instances: ports from one byte to three bytes as varints, TLS ports or none, guids that
    can or cannot be labels, zones or none, indexes of one and more digits."""
    out = []
    for i in range(count):
        port = [1, 127, 128, 16383, 16384, 65535][i % 6] if i < 6 else base_port + i
        tls = 0 if i % 5 == 4 else 40000 + i
        guid = ["", "bad_guid_", f"guid-{i}-" + "g" * (i % 70)][i % 3] if i else f"first-{i}"
        out.append(Backend(f"10.{i // 250}.{i % 250}.{1 + i % 7}", port, tls, guid, i * 37, "" if i % 4 == 3 else zone))
    return out


def process(
    guid: str = "proc", *, count: int = 2, app_guid: str = "app-guid", protocol: str = "http1", zone: str = "z1"
) -> Destination:
    return Destination(guid, 8080, 3, protocol, backends(count, zone=zone), app_guid=app_guid)


COMMON_HOSTS = {
    "root": HostRoutes("app.example.com", {"": [process()]}),
    "context path only": HostRoutes("ctx.example.com", {"/api/v1": [process()]}),
    "root and paths": HostRoutes("paths.example.com", {"": [process()], "/a": [process()], "/a/b": [process()]}),
    "wildcard": HostRoutes("*.wild.example.com", {"": [process()]}),
    "long names": HostRoutes(LONG_HOST, {"": [process("p" * 200)], "/" + "x" * 300: [process("p" * 200)]}),
    "many instances": HostRoutes("many.example.com", {"": [process(count=300)]}),  # lengths over 16383
    "no instances": HostRoutes("empty.example.com", {"": [process(count=0)]}),
    "unicode zone and path": HostRoutes("u.example.com", {"": [process(zone="zone-é€")], "/café": [process(zone="zone-é€")]}),
    "upper-case host": HostRoutes("Upper.Example.COM.", {"": [process()]}),
    "app guid not a header value": HostRoutes("bad-app.example.com", {"": [process(app_guid="bad app guid")]}),
    "app guid a header value but no label": HostRoutes("colon-app.example.com", {"": [process(app_guid="app:guid")]}),
    "app guid of 63 characters": HostRoutes("long-app.example.com", {"": [process(app_guid="a" * 63)]}),
    "no app guid": HostRoutes("no-app.example.com", {"": [process(app_guid="")], "/b": [process(app_guid="")]}),
    "http2 process": HostRoutes("h2.example.com", {"": [process(protocol="http2")]}),  # common only while HTTP/2 is off
    "bad endpoint": HostRoutes(
        "bad-endpoint.example.com",
        {"": [Destination("proc", 8080, 1, "http1", [Backend("not-an-ip", 61000, 61001, "g"), *backends(2)])]},
    ),
    "platform process": HostRoutes(
        "api.sys.example.com", {"": [Destination(f"{PLATFORM_PROCESS_PREFIX}registrar:", 0, 1, "http1", backends(3))]}
    ),
    "two processes on two paths": HostRoutes("split.example.com", {"": [process("a")], "/b": [process("b")]}),
    "three paths, two processes": HostRoutes(  # services in the order of first use, paths sorted
        "order.example.com", {"/c": [process("a")], "/b": [process("b")], "": [process("a", count=1)]}
    ),
}
# The VirtualService is written as bytes, the service is the builder's.
OTHER_SERVICES = {
    "platform TLS": HostRoutes(
        "uaa.example.com", {"": [Destination(f"{PLATFORM_PROCESS_PREFIX}uaa:uaa", 0, 1, "http1", backends(2), tls_san="uaa")]}
    ),
}
OTHER_HOSTS = {
    "two processes": HostRoutes("weighted.example.com", {"": [process("a"), process("b")]}),
    "route service": HostRoutes(
        "bound.example.com",
        {"": [Destination("proc", 8080, 1, "http1", backends(2), route_service_url="https://rs.example.com")]},
    ),
    "one process twice on a path": HostRoutes("twice.example.com", {"": [process(), process()]}),
    "no paths": HostRoutes("nothing.example.com", {}),
    "a path of 64 KiB": HostRoutes("huge.example.com", {"/" + "x" * 0x10000: [process()]}),  # past the varint table
}


def _message_bytes(settings: GatewaySettings, routes: HostRoutes) -> list[tuple[str, str, bytes]]:
    return [(o.kind.name, o.name, o.spec.SerializeToString(deterministic=True)) for o in build_host(settings, routes)]


def _sent(obj: IstioObject | EncodedObject) -> tuple[str, int, bytes]:
    resource = serialize(obj).resource
    return obj.name, resource.digest, resource.encoded


@pytest.fixture(autouse=True)
def _fresh_first_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the builder's once-per-endpoint warnings anew (the bad endpoint is left out both ways)."""
    monkeypatch.setattr(invalid_input, "first_sight", lambda *args: True)


@pytest.mark.parametrize("settings_name", SETTINGS)
@pytest.mark.parametrize("host_name", COMMON_HOSTS)
def test_the_common_host_as_bytes_is_what_the_messages_serialize_to(settings_name: str, host_name: str) -> None:
    settings, routes = SETTINGS[settings_name], COMMON_HOSTS[host_name]
    encoded = encode_common_host(settings, routes)
    if host_name == "http2 process" and settings.enable_http2:
        assert encoded is None  # its subset policy (HTTP/2 upgrade) is the builder's
        return
    assert encoded is not None, "the common host must take the byte path"
    assert [(o.kind.name, o.name, o.body) for o in encoded] == _message_bytes(settings, routes)
    # and as the store sends them: the same envelopes and digests
    assert [_sent(o) for o in encoded] == [_sent(o) for o in build_host(settings, routes)]


def _parts_bytes(parts) -> tuple[list[tuple[str, str, bytes]], list]:  # type: ignore[no-untyped-def]
    objects = [(o.kind.name, o.name, serialize(o).resource.encoded) for o in parts.objects]
    return objects, parts.services


@pytest.mark.parametrize("settings_name", SETTINGS)
@pytest.mark.parametrize("host_name", OTHER_HOSTS)
def test_other_hosts_are_left_to_the_builder(settings_name: str, host_name: str) -> None:
    settings, routes = replace(SETTINGS[settings_name], upstream_ca_file="/ca/upstream.pem"), OTHER_HOSTS[host_name]
    assert encode_host_parts(settings, routes) is None
    assert _parts_bytes(build_host_encoded(settings, routes)) == _parts_bytes(build_host_parts(settings, routes))


@pytest.mark.parametrize("settings_name", SETTINGS)
@pytest.mark.parametrize("host_name", OTHER_SERVICES)
def test_other_services_are_left_to_the_builder(settings_name: str, host_name: str) -> None:
    settings, routes = replace(SETTINGS[settings_name], upstream_ca_file="/ca/upstream.pem"), OTHER_SERVICES[host_name]
    parts = encode_host_parts(settings, routes)
    assert parts is not None, "its VirtualService takes the byte path"
    assert _parts_bytes(parts) == _parts_bytes(build_host_parts(settings, routes))
    [service] = parts.services
    assert encode_service(settings, service) is None
    assert [_sent(o) for o in build_service_encoded(settings, service)] == [_sent(o) for o in build_service(settings, service)]


def test_hosts_routing_to_one_process_name_one_service_whose_bytes_are_the_builders() -> None:
    settings = SETTINGS["integrity"]
    first = encode_host_parts(settings, HostRoutes("one.example.com", {"": [process()]}))
    second = encode_host_parts(settings, HostRoutes("two.example.com", {"/x": [process()]}))
    assert first is not None and second is not None
    assert [s.name for s in first.services] == [s.name for s in second.services]
    [service] = first.services
    encoded = encode_service(settings, service)
    assert encoded is not None
    assert [_sent(o) for o in encoded] == [_sent(o) for o in build_service(settings, second.services[0])]


@pytest.mark.parametrize(
    "settings",
    [
        GatewaySettings(instance_routing=True),
        GatewaySettings(router_shards=GatewaySettings().router_shards * 2),  # anything but the default shard
    ],
    ids=["instance routing", "router shards"],
)
def test_settings_the_byte_path_does_not_write_leave_every_host_to_the_builder(settings: GatewaySettings) -> None:
    assert encode_common_host(settings, COMMON_HOSTS["root"]) is None


def test_a_bad_host_name_is_refused_as_the_builder_refuses_it() -> None:
    for host in ("bücher.example.com", "bad host", "x" * 254):
        routes = HostRoutes(host, {"": [process()]})
        with pytest.raises(InvalidRoute) as wire_error:
            encode_common_host(GatewaySettings(), routes)
        with pytest.raises(InvalidRoute) as message_error:
            build_host(GatewaySettings(), routes)
        assert str(wire_error.value) == str(message_error.value)


def test_a_zero_weight_is_refused_as_the_builder_refuses_it() -> None:
    routes = HostRoutes("zero.example.com", {"": [Destination("proc", 8080, 0, "http1", backends(1))]})
    assert encode_common_host(GatewaySettings(), routes) is None
    with pytest.raises(ValueError, match="weights must be positive"):
        build_host_encoded(GatewaySettings(), routes)


def test_encoded_objects_decode_to_the_builders_messages() -> None:
    routes = COMMON_HOSTS["root and paths"]
    encoded = encode_common_host(SETTINGS["integrity"], routes)
    assert encoded is not None
    assert [o.spec for o in encoded] == [o.spec for o in build_host(SETTINGS["integrity"], routes)]
