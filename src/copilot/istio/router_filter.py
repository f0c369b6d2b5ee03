"""The gorouter compatibility EnvoyFilter: gorouter behaviour Istio has no API for (the only other
EnvoyFilter, builder.build_shared_routes_filter, gives HTTPS the HTTP route configuration).

Everything else (routes, TLS, TCP, per-route headers, HTTP/2 upstreams) is plain Gateway /
VirtualService / DestinationRule / ServiceEntry. This filter adds, on the router's HTTP connection
managers (context GATEWAY, selected by the Gateway's labels):

1. An upstream header_mutation on the router filter (`Router.upstream_http_filters`, run per attempt,
   after the load balancer picked an instance, for every cluster): `X-Request-Start` (ms since the
   epoch at the request's start), `X-Vcap-Request-Id` (Envoy's request id), and `X-CF-ApplicationID`,
   `X-CF-InstanceID` / `X-CF-InstanceIndex` from the picked endpoint's metadata (client-sent values are
   dropped first). Copilot labels each app instance's endpoint `copilot.cloudfoundry.org/application-id`
   (its app guid), `/instance-id` and `/instance-index`; istiod (with the change scripts/build-go-tools
   makes) copies labels under that prefix into the endpoint's filter metadata namespace
   ENDPOINT_METADATA. No script runs per request. Route-level headers cannot do the instance headers
   (they are evaluated before an endpoint is chosen); the app's id is read there too, so no route
   carries a header of its own (a weighted route names the app that answered), and a route service
   (the route-service proxy's endpoint has no labels) gets none, as from gorouter.
2. Sticky sessions: Envoy's stateful_session filter with a `__VCAP_ID__` cookie naming the instance;
   requests carrying it go to that instance while it is in the cluster, else to another one (re-pinned).
   A matcher around it (no script) skips it from the response on unless the request carried a session
   cookie (JSESSIONID by default) or the response sets one, so the cookie is handed out only then, as
   gorouter does.
3. `X-Cf-Routererror` on the router's own 502/503/504 answers (the connection manager's local reply
   mappers, by response flag): `no_endpoints` or `endpoint_failure`, as gorouter names them.
4. Route integrity per instance (CLUSTER patch on the clusters of IDENTITY_SERVICE_PORT): SNI from, and
   the certificate's SAN checked against, each endpoint's hostname (the instance guid).
6. Trusted proxies (trusted_proxy_hops, e.g. a load balancer terminating TLS): the connection managers'
   xff_num_trusted_hops, so its X-Forwarded-Proto reaches the apps.
7. HTTP/2 off (Http1Only, gorouter's router.enable_http2: false): the connection managers take HTTP/1.1
   only (no h2c), and each HTTPS filter chain's TLS offers ALPN http/1.1 alone. istiod always offers
   "h2,http/1.1" there and an EnvoyFilter MERGE appends to lists, so the patch replaces the chain's whole
   TLS context with the same one istiod builds (the certificate from the router's SDS server under
   istiod's file-cert name, the Gateway's TLS version and ciphers) minus h2: istiod merges two transport
   sockets field by field only when their names are equal, and a message of another name replaces it.
   The first patch gives every chain on the HTTPS port the first certificate's context (the fallback
   chain has no SNI to match), each next one the context of the certificate whose first SNI name the
   chain serves, under yet another name so it replaces again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from google.protobuf import struct_pb2

from copilot.istio.kinds import ENVOY_FILTER, IstioObject
from copilot.protos import istio_networking_pb2 as pb

ROUTER_FILTER_NAME = "cf-router"
# Route integrity: the service port of hosts whose app instances are reached on their TLS proxy ports
# (builder.py). The filter finds their clusters by it and checks each instance's identity.
IDENTITY_SERVICE_PORT = 8443
STICKY_COOKIE = "__VCAP_ID__"
# A cookie name is an RFC 6265 token (it goes into the matcher's regex escaped).
COOKIE_NAME_RE = re.compile(r"^[A-Za-z0-9!#$&'*+.^_`|~-]+$")

_HCM = "envoy.filters.network.http_connection_manager"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_COOKIE_STATE = "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
_ROUTER = "envoy.filters.http.router"
_HEADER_MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
# The endpoint metadata namespace istiod fills from endpoint labels under this prefix, and its keys.
ENDPOINT_METADATA = "copilot.cloudfoundry.org"
INSTANCE_ID_KEY = "instance-id"
INSTANCE_INDEX_KEY = "instance-index"
APPLICATION_ID_KEY = "application-id"
_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
# Transport socket names of the HTTP/1.1-only TLS contexts: Envoy picks the socket by its type, and
# each differs from istiod's (envoy.transport_sockets.tls) and from the other so a patch replaces it.
HTTP1_TLS_SOCKET = "cf.router.tls.http1"
HTTP1_TLS_SOCKET_BY_SNI = "cf.router.tls.http1.sni"
# The istio-router job's bootstrap cluster of its SDS server (envoy.json.erb), which istiod names too.
SDS_CLUSTER = "sds-grpc"
_ENVOY_TLS_VERSIONS = {"1.2": "TLSv1_2", "1.3": "TLSv1_3"}


@dataclass(frozen=True)
class Http1Only:
    """HTTP/2 off. certificates: (first SNI name, certificate file, key file) of each HTTPS certificate of
    the Gateway on https_port (0: no HTTPS), in the Gateway's order; their TLS version and ciphers."""

    https_port: int = 0
    certificates: tuple[tuple[str, str, str], ...] = ()
    tls_min_version: str = "1.2"
    tls_cipher_suites: tuple[str, ...] = ()


def file_cert_name(cert_file: str, key_file: str) -> str:
    """istiod's SDS resource name of a Gateway server's certificate files (router_sds serves it)."""
    return f"file-cert:{cert_file}~{key_file}"


def _http1_tls_socket(name: str, http1: Http1Only, cert_file: str, key_file: str) -> dict:
    params: dict = {"tls_minimum_protocol_version": _ENVOY_TLS_VERSIONS[http1.tls_min_version]}
    if http1.tls_cipher_suites:
        params["cipher_suites"] = list(http1.tls_cipher_suites)
    sds = {
        "api_config_source": {
            "api_type": "GRPC",
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            "set_node_on_first_message_only": True,
            "transport_api_version": "V3",
        },
        "resource_api_version": "V3",
    }
    return {
        "name": name,
        "typed_config": {
            "@type": _DOWNSTREAM_TLS,
            "common_tls_context": {
                "tls_params": params,
                "alpn_protocols": ["http/1.1"],
                "tls_certificate_sds_secret_configs": [{"name": file_cert_name(cert_file, key_file), "sds_config": sds}],
            },
            "require_client_certificate": False,
        },
    }


def _add_http1_only_tls(ef: pb.EnvoyFilter, http1: Http1Only) -> None:
    if not (http1.https_port and http1.certificates):
        return
    _, cert_file, key_file = http1.certificates[0]
    patches = [(None, _http1_tls_socket(HTTP1_TLS_SOCKET, http1, cert_file, key_file))]
    patches += [(sni, _http1_tls_socket(HTTP1_TLS_SOCKET_BY_SNI, http1, cert, key)) for sni, cert, key in http1.certificates]
    for sni, socket in patches:
        listener = pb.EnvoyFilter.ListenerMatch(port_number=http1.https_port)
        if sni is not None:
            listener.filter_chain.sni = sni
        ef.config_patches.add(
            apply_to=pb.EnvoyFilter.FILTER_CHAIN,
            match=pb.EnvoyFilter.EnvoyConfigObjectMatch(context=pb.EnvoyFilter.GATEWAY, listener=listener),
            patch=pb.EnvoyFilter.Patch(operation=pb.EnvoyFilter.Patch.MERGE, value=_struct({"transport_socket": socket})),
        )

# Headers only the router or Copilot's routes may set: dropped from what a client sent, before routing
# (X-CF-ApplicationID is set from the picked endpoint, above, and dropped before routing too so the
# route-service proxy never sees a client's; the x-cf-rs-* ones tell the route-service proxy about a route).
CLIENT_HEADERS_DROPPED = (
    "x-cf-applicationid",
    "x-cf-rs-route-host",
    "x-cf-rs-route-path",
    "x-cf-rs-route-service-url",
    "x-cf-rs-route-excluded-paths",
    "x-cf-rs-route-service-internal",
    "x-cf-rs-local-token",
)
_MATCH_INPUT = "type.googleapis.com/envoy.type.matcher.v3.Http{}HeaderMatchInput"
_SKIP_FILTER = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"


def session_cookie_regex(cookie_names: tuple[str, ...], separators: str) -> str:
    """An RE2 regex matching a whole Cookie header (`separators` ";,": pairs, and headers joined by ",")
    or all Set-Cookie values joined by "," (`separators` ","), when one of `cookie_names` is a cookie name
    in it. Envoy's regex matchers match the whole value, hence the `.*` on both sides."""
    for name in cookie_names:
        if not COOKIE_NAME_RE.fullmatch(name) or name == STICKY_COOKIE:
            raise ValueError(f"{name!r} is not a usable session cookie name")
    if not cookie_names:
        raise ValueError("at least one session cookie name is needed")
    names = "|".join(re.escape(name) for name in cookie_names)
    return f"(.*[{separators}])?\\s*({names})=.*"


def _has(direction: str, header: str, regex: str) -> dict:
    return {
        "single_predicate": {
            "input": {
                "name": f"{direction.lower()}-{header}",
                "typed_config": {"@type": _MATCH_INPUT.format(direction), "header_name": header},
            },
            "value_match": {"safe_regex": {"google_re2": {}, "regex": regex}},
        }
    }


def sticky_sessions(cookie_names: tuple[str, ...]) -> dict:
    """gorouter's sticky sessions without a script: Envoy's stateful_session filter (a `__VCAP_ID__`
    cookie naming the instance) wrapped in a matcher that skips it, from the response on, unless the
    request carried a session cookie or the response sets one. So a request with `__VCAP_ID__` still goes
    to its instance, but the cookie is handed out (or renewed) only beside a session cookie."""
    state = {
        "name": "envoy.http.stateful_session.cookie",
        "typed_config": {"@type": _COOKIE_STATE, "cookie": {"name": STICKY_COOKIE, "path": "/"}},
    }
    no_session = {
        "and_matcher": {
            "predicate": [
                {"not_matcher": _has("Request", "cookie", session_cookie_regex(cookie_names, ";,"))},
                {"not_matcher": _has("Response", "set-cookie", session_cookie_regex(cookie_names, ","))},
            ]
        }
    }
    skip = {"action": {"name": "skip", "typed_config": {"@type": _SKIP_FILTER}}}
    return {
        "name": "envoy.filters.http.stateful_session",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            "extension_config": {
                "name": "envoy.filters.http.stateful_session",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
                    "session_state": state,
                },
            },
            "xds_matcher": {"matcher_list": {"matchers": [{"predicate": no_session, "on_match": skip}]}},
        },
    }


def _struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(json.loads(json.dumps(value)))
    return out


def _hcm_match(sub_filter: str | None = None) -> pb.EnvoyFilter.EnvoyConfigObjectMatch:
    hcm = pb.EnvoyFilter.ListenerMatch.FilterMatch(name=_HCM)
    if sub_filter:
        hcm.sub_filter.name = sub_filter
    listener = pb.EnvoyFilter.ListenerMatch(filter_chain=pb.EnvoyFilter.ListenerMatch.FilterChainMatch(filter=hcm))
    return pb.EnvoyFilter.EnvoyConfigObjectMatch(context=pb.EnvoyFilter.GATEWAY, listener=listener)


def _set(header: str, value: str) -> dict:
    return {"append": {"header": {"key": header, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}


def build_router_filter(
    namespace: str,
    selector: dict[str, str],
    sticky_cookie_names: tuple[str, ...],
    http1_only: Http1Only | None = None,
    *,
    trusted_proxy_hops: int = 0,
) -> IstioObject:
    upstream_filters = [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": _HEADER_MUTATION,
                "mutations": {
                    "request_mutations": [
                        # The route-service proxy's X-Forwarded-Proto for the app's route: used, then dropped.
                        {"remove": "x-cf-rs-forwarded-proto"},
                        # Set from the instance's metadata, or absent (a platform route's backend has none,
                        # nor has the route-service proxy: a route service gets no X-CF-ApplicationID).
                        {"remove": "x-cf-applicationid"},
                        {"remove": "x-cf-instanceid"},
                        {"remove": "x-cf-instanceindex"},
                        _set("x-cf-applicationid", f"%UPSTREAM_METADATA({ENDPOINT_METADATA}:{APPLICATION_ID_KEY})%"),
                        _set("x-cf-instanceid", f"%UPSTREAM_METADATA({ENDPOINT_METADATA}:{INSTANCE_ID_KEY})%"),
                        _set("x-cf-instanceindex", f"%UPSTREAM_METADATA({ENDPOINT_METADATA}:{INSTANCE_INDEX_KEY})%"),
                        _set("x-request-start", "%START_TIME(%s%3f)%"),
                        _set("x-vcap-request-id", "%REQ(x-request-id)%"),
                    ]
                },
            },
        },
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
        },
    ]
    ef = pb.EnvoyFilter(workload_selector=pb.WorkloadSelector(labels=selector))
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.HTTP_FILTER,
        match=_hcm_match(_ROUTER),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.MERGE,
            value=_struct({
                "name": _ROUTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "upstream_http_filters": upstream_filters,
                },
            }),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.HTTP_FILTER,
        match=_hcm_match(_ROUTER),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.INSERT_BEFORE,
            value=_struct(sticky_sessions(sticky_cookie_names)),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.HTTP_FILTER,
        match=_hcm_match(),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.INSERT_FIRST,
            value=_struct({
                "name": "cf.client_headers",
                "typed_config": {
                    "@type": _HEADER_MUTATION,
                    "mutations": {"request_mutations": [{"remove": h} for h in CLIENT_HEADERS_DROPPED]},
                },
            }),
        ),
    )
    hcm: dict = {"@type": _HCM_TYPE, "local_reply_config": {"mappers": _ROUTER_ERROR_MAPPERS}}
    if http1_only is not None:
        hcm["codec_type"] = "HTTP1"
    if trusted_proxy_hops:
        # A load balancer's X-Forwarded-Proto is kept (Envoy replaces it only from untrusted peers), and
        # the client's address is the one it appended to X-Forwarded-For.
        hcm["xff_num_trusted_hops"] = trusted_proxy_hops
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.NETWORK_FILTER,
        match=_hcm_match(),
        patch=pb.EnvoyFilter.Patch(operation=pb.EnvoyFilter.Patch.MERGE, value=_struct({"name": _HCM, "typed_config": hcm})),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.CLUSTER,
        match=pb.EnvoyFilter.EnvoyConfigObjectMatch(
            context=pb.EnvoyFilter.GATEWAY, cluster=pb.EnvoyFilter.ClusterMatch(port_number=IDENTITY_SERVICE_PORT)
        ),
        patch=pb.EnvoyFilter.Patch(operation=pb.EnvoyFilter.Patch.MERGE, value=_struct(_IDENTITY_CHECK)),
    )
    if http1_only is not None:
        _add_http1_only_tls(ef, http1_only)
    return IstioObject(ENVOY_FILTER, f"{namespace}/{ROUTER_FILTER_NAME}", ef)


# Route integrity per instance, as gorouter checks it: each connection to an app instance's TLS proxy
# sends the endpoint's hostname (its instance guid, from Copilot's endpoint label) as SNI and accepts only
# a certificate whose DNS SAN is that name; it replaces the DestinationRule's placeholder SNI and SAN.
_IDENTITY_CHECK = {
    "transport_socket": {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "auto_host_sni": True,
            "auto_sni_san_validation": True,
        },
    }
}

# gorouter's X-Cf-Routererror on the answers the router gives itself when no instance answered: no
# instance to send to (503 no_endpoints), or every attempt failed to connect or complete its TLS
# handshake with a cell proxy, was reset or timed out (502/503/504 endpoint_failure).
_ROUTER_ERROR_MAPPERS = [
    {
        "filter": {"response_flag_filter": {"flags": flags}},
        "headers_to_add": [_set("x-cf-routererror", value)["append"]],
    }
    for flags, value in ((["UH"], "no_endpoints"), (["UF", "URX", "UC", "UT", "UR"], "endpoint_failure"))
]
