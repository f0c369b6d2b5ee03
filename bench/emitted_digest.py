"""What Copilot emits for a fixed, varied routing state, as digests: a sha256 over every object's
encoded resource (name, spec type and spec bytes as sent to istiod) and every kind's version, per
gateway configuration (defaults; route integrity with client certificate, instance routing, HTTPS, route
services with internal lookup; router shards). A change meant to make building faster must print the
same lines before and after it. Asserts nothing.

    PYTHONPATH=$PWD/src .venv/bin/python bench/emitted_digest.py [-v]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from copilot.istio.kinds import PUSH_ORDER  # noqa: E402
from copilot.istio.shards import RouterShard  # noqa: E402
from copilot.model import (  # noqa: E402
    CCRoute,
    HttpRoute,
    Instance,
    InternalRoute,
    PortMapping,
    ProcessRoutes,
    Registration,
    TcpRoute,
)
from copilot.publisher import Publisher  # noqa: E402
from copilot.settings import Certificate, GatewaySettings, OutlierDetection, RouteServiceSettings  # noqa: E402
from copilot.views import Views  # noqa: E402
from copilot.xds.store import Store  # noqa: E402

SETTINGS = {
    "defaults": GatewaySettings(),
    "integrity": GatewaySettings(
        namespace="cf",
        https_port=443,
        certificates=(Certificate("a", ("*.apps.example.com",)), Certificate("b", ("sys.example.com", "*.sys.example.com"))),
        tls_cipher_suites=("ECDHE-RSA-AES128-GCM-SHA256",),
        instance_identity_ca_file="/ca/identity.pem",
        backend_client_certificate="client",
        upstream_ca_file="/ca/upstream.pem",
        instance_routing=True,
        enable_http2=False,
        outlier_detection=OutlierDetection(5, 12.5, 50, 0),
        route_services=RouteServiceSettings(internal_lookup=True),
    ),
    # v58 cells as cf-deployment runs them: route integrity with the client certificate, no instance
    # routing (the common host's DestinationRule then carries the identity TLS, its endpoints the TLS ports).
    "v58-cells": GatewaySettings(
        instance_identity_ca_file="/ca/identity.pem", backend_client_certificate="client", upstream_ca_file="/ca/u.pem"
    ),
    "route-services": GatewaySettings(route_services=RouteServiceSettings(), instance_routing=True, upstream_ca_file="/ca/u.pem"),
    "no-outlier": GatewaySettings(outlier_detection=OutlierDetection(0), upstream_ca_file="/ca/u.pem"),
    "shards": GatewaySettings(
        router_shards=(
            RouterShard("all-shared", "shared-and-segments", ("seg-b",)),
            RouterShard("seg_a", "segments", ("seg-a",), "127.0.0.2"),
            RouterShard("seg-b", "segments", ("seg-b",)),
        ),
        instance_identity_ca_file="/ca/identity.pem",
        route_services=RouteServiceSettings(),
        upstream_ca_file="/ca/u.pem",
    ),
}


def _instance(guid: str, index: int, ports: tuple[PortMapping, ...], *, state: str = "RUNNING", zone: str = "z1") -> Instance:
    return Instance(
        guid, index, f"{guid}-i{index}", state, True, f"10.1.{index}.{len(guid)}", f"10.255.{index}.9", False, ports, zone
    )


def populate(views: Views) -> None:
    """A fixed state touching every path of the builder: hosts with several context paths, several
    processes per host, CC weights, rolling deploys, route services (bound by DesiredLRP and by CC),
    HTTP/2, TCP routes, internal routes, platform registrations (plain and TLS), isolation segments,
    instances without TLS ports, crashed and evacuating instances, a wildcard host."""
    bbs, cc = views.bbs, views.cc
    segments = ("", "seg-a", "seg-b")
    for i in range(40):
        guid = f"proc-{i}"
        segment = segments[i % 3]
        http = [HttpRoute(f"app-{i}.apps.example.com", "", 8080, isolation_segment=segment)]
        if i % 4 == 0:
            http.append(HttpRoute(f"app-{i}.apps.example.com", "/api/v1", 8081, "http2", isolation_segment=segment))
        if i % 5 == 0:
            http.append(HttpRoute(f"shared-{i % 10}.apps.example.com", "/p", 8080, isolation_segment=segment))
            http.append(HttpRoute(f"shared-{i % 10}.apps.example.com", "", 8080, isolation_segment=segment))
        if i % 7 == 0:
            url = "https://rs.sys.example.com/filter" if i % 2 else "https://app-1.apps.example.com/rs%20x"
            http.append(HttpRoute(f"bound-{i}.apps.example.com", "", 8080, route_service_url=url, isolation_segment=segment))
            http.append(HttpRoute(f"bound-{i}.apps.example.com", "/deep/er", 8080, route_service_url=url))
        if i == 3:
            http.append(HttpRoute("*.wild.example.com", "", 8080))
        tcp = (TcpRoute(1024 + i % 6, 9000),) if i % 3 == 0 else ()
        internal = (InternalRoute(f"app-{i}.apps.internal"),) if i % 6 == 0 else ()
        bbs.upsert_process(guid, ProcessRoutes(tuple(http), tcp, internal, app_guid=f"app-guid-{i}" if i % 9 else ""))
        for index in range(1 + i % 3):
            tls = 61001 + index if i % 4 != 1 else 0
            ports = (
                PortMapping(8080, 61000 + index, 62000, tls),
                PortMapping(8081, 61100 + index),
                PortMapping(9000, 63000 + i, 0, 63500 + i),
            )
            bbs.upsert_instance(0, _instance(guid, index, ports, zone=f"z{index % 2}"))
        if i % 8 == 2:
            bbs.upsert_instance(1, _instance(guid, 0, (PortMapping(8080, 64000, 0, 64001),)))  # evacuating
            bbs.upsert_instance(0, _instance(guid, 5, (PortMapping(8080, 64002),), state="CRASHED"))
    # Hosts of one process: only a context path (the unknown-route answer after it), two context paths
    # and the root, a name long enough for two-byte lengths, instances without a zone or with a guid
    # that cannot be a label, an app guid that cannot be a header value.
    long_host = ".".join(["a-rather-long-label-for-two-byte-varints-" + "x" * 20] * 3) + ".apps.example.com"
    single = [
        ("single-ctx", (HttpRoute("ctx-only.apps.example.com", "/only/here", 8080),), "app-ctx"),
        ("single-paths", tuple(HttpRoute("paths.apps.example.com", p, 8080) for p in ("", "/a", "/a/b")), "app-paths"),
        ("single-long", (HttpRoute(long_host, "", 8080), HttpRoute(long_host, "/" + "p" * 140, 8080)), "bad app guid"),
    ]
    for guid, http, app_guid in single:
        bbs.upsert_process(guid, ProcessRoutes(http, app_guid=app_guid))
        for index, (instance_guid, zone) in enumerate(((f"{guid}-a", ""), ("bad_guid_", "z9"), (f"{guid}-c", "zone-é"))):
            ports = (PortMapping(8080, 61200 + index, 0, 61300 + index if index != 1 else 0),)
            instance = Instance(guid, index, instance_guid, "RUNNING", True, f"10.2.{index}.{len(guid)}", "", False, ports, zone)
            bbs.upsert_instance(0, instance)
    # Cloud Controller: weighted mappings, a rolling deploy (two Diego processes for one CC process),
    # an internal route with a VIP.
    for r in range(6):
        cc.upsert_route(CCRoute(f"route-{r}", f"cc-{r}.apps.example.com", "/cc" if r % 2 else ""))
        cc.map_route(f"route-{r}", f"capi-{r}", 1 + r)
        cc.map_route(f"route-{r}", f"capi-{r + 1}", 3)
    for c in range(7):
        cc.upsert_association(f"capi-{c}", (f"proc-{c}",) if c % 3 else (f"proc-{c}", f"proc-{c + 20}"))
    cc.upsert_route(CCRoute("route-app-4", "app-4.apps.example.com", ""))  # CC's mapping replaces the DesiredLRP's
    cc.map_route("route-app-4", "capi-2", 5)
    cc.upsert_route(CCRoute("internal-1", "cc.apps.internal", "", True, "127.128.0.7"))
    cc.map_route("internal-1", "capi-1", 1)
    cc.upsert_route(CCRoute("internal-2", "cc2.apps.internal", "", True, "127.128.0.8"))
    cc.map_route("internal-2", "capi-3", 1)
    # Platform registrations: plain, TLS, two VMs of one source, one joining an app's host.
    registrations = [
        Registration("api.sys.example.com", "", "10.0.16.1", 9022),
        Registration("api.sys.example.com", "", "10.0.16.2", 9022),
        Registration("uaa.sys.example.com", "", "10.0.16.3", 0, 8443, "uaa.service.cf.internal", "uaa"),
        Registration("app-2.apps.example.com", "/platform", "10.0.16.4", 8080, source="extra"),
    ]
    for registration in registrations:
        views.registrar.register(registration, 1e12)


def digests(settings: GatewaySettings) -> tuple[str, dict[str, str], int]:
    """(sha256 over every encoded resource in name order per kind, per kind its version, object count)."""
    views, store = Views(), Store()
    publisher = Publisher(views, store, settings)
    populate(views)
    publisher.publish()
    publisher.publish(everything=True)  # a second full rebuild changes nothing
    snapshot = store.snapshot()
    total, versions, count = hashlib.sha256(), {}, 0
    for kind in PUSH_ORDER:
        collection = kind.collection
        resources = snapshot.resources(collection)
        versions[collection.rsplit("/", 1)[-1]] = snapshot.version(collection)
        for name in resources.names():
            resource = resources.get(name)
            total.update(name.encode() + b"\0" + resource.encoded + b"\0")  # the envelope too
            count += 1
    return total.hexdigest(), versions, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="also print each kind's version")
    args = parser.parse_args()
    for label, settings in SETTINGS.items():
        digest, versions, count = digests(settings)
        print(f"{label:>15} {count:>4} objects sha256 {digest}")
        if args.verbose:
            for kind, version in versions.items():
                print(f"{'':>15} {kind:>16} {version}")


if __name__ == "__main__":
    main()
