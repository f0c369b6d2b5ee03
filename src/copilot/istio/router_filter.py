"""The one EnvoyFilter Copilot emits: gorouter behaviour Istio has no API for.

Everything else (routes, TLS, TCP, per-route headers, HTTP/2 upstreams) is plain Gateway /
VirtualService / DestinationRule / ServiceEntry. This filter adds, on the router's HTTP connection
managers (context GATEWAY, selected by the Gateway's labels):

1. An upstream header_mutation on the router filter (`Router.upstream_http_filters`, run per attempt,
   after the load balancer picked an instance, for every cluster): `X-Request-Start` (ms since the
   epoch at the request's start), `X-Vcap-Request-Id` (Envoy's request id), and `X-CF-InstanceID` /
   `X-CF-InstanceIndex` from the picked endpoint's metadata (client-sent values are dropped first).
   Copilot labels each app instance's endpoint `copilot.cloudfoundry.org/instance-id` and
   `/instance-index`; istiod (with the change scripts/build-go-tools makes) copies labels under that
   prefix into the endpoint's filter metadata namespace ENDPOINT_METADATA. No script runs per request.
   Route-level headers cannot do this: they are evaluated before an endpoint is chosen.
2. Sticky sessions: Envoy's stateful_session filter with a `__VCAP_ID__` cookie naming the instance;
   requests carrying it go to that instance while it is in the cluster, else to another one (re-pinned).
   A Lua filter (first in the chain, so it sees responses last) hands the cookie out only when the app
   sets a session cookie (JSESSIONID by default) or the request carried one, as gorouter does.
3. `X-Cf-Routererror` on the router's own 502/503/504 answers (the connection manager's local reply
   mappers, by response flag): `no_endpoints` or `endpoint_failure`, as gorouter names them.
4. Route integrity per instance (CLUSTER patch on the clusters of IDENTITY_SERVICE_PORT): SNI from, and
   the certificate's SAN checked against, each endpoint's hostname (the instance guid).
5. Route services (builder.py): the first Lua drops client-sent `x-cf-rs-route-*` headers (only
   Copilot's routes tell the route-service proxy about a route), and the upstream header_mutation drops
   `x-cf-rs-forwarded-proto` once the verified route has turned it into X-Forwarded-Proto.
"""

from __future__ import annotations

import json
import re

from google.protobuf import struct_pb2

from copilot.istio.kinds import ENVOY_FILTER, IstioObject
from copilot.protos import istio_networking_pb2 as pb

ROUTER_FILTER_NAME = "cf-router"
# Route integrity: the service port of hosts whose app instances are reached on their TLS proxy ports
# (builder.py). The filter finds their clusters by it and checks each instance's identity.
IDENTITY_SERVICE_PORT = 8443
STICKY_COOKIE = "__VCAP_ID__"
# A cookie name is an RFC 6265 token; we also keep Lua-significant characters out.
COOKIE_NAME_RE = re.compile(r"^[A-Za-z0-9!#$&'*+.^_`|~-]+$")

_HCM = "envoy.filters.network.http_connection_manager"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_COOKIE_STATE = "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
_ROUTER = "envoy.filters.http.router"
# The endpoint metadata namespace istiod fills from endpoint labels under this prefix, and its keys.
ENDPOINT_METADATA = "copilot.cloudfoundry.org"
INSTANCE_ID_KEY = "instance-id"
INSTANCE_INDEX_KEY = "instance-index"

_STICKY_LUA = """-- gorouter's sticky sessions: __VCAP_ID__ only beside a session cookie (cf-router EnvoyFilter)
local SESSION_COOKIES = {%(names)s}
local STICKY = "%(sticky)s"

local function names_session_cookie(headers, header, pattern)
  for i = 0, headers:getNumValues(header) - 1 do
    for name in string.gmatch(headers:getAtIndex(header, i), pattern) do
      if SESSION_COOKIES[name] then
        return true
      end
    end
  end
  return false
end

function envoy_on_request(handle)
  local headers = handle:headers()
  -- Only the router sets X-CF-ApplicationID (per route); drop what a client sent.
  headers:remove("x-cf-applicationid")
  -- Only Copilot's routes tell the route-service proxy about a route; drop what a client sent.
  headers:remove("x-cf-rs-route-host")
  headers:remove("x-cf-rs-route-path")
  headers:remove("x-cf-rs-route-service-url")
  headers:remove("x-cf-rs-route-excluded-paths")
  headers:remove("x-cf-rs-local-token")
  if names_session_cookie(headers, "cookie", "([^=;%%s]+)=") then
    handle:streamInfo():dynamicMetadata():set("cf.sticky", "session", "1")
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local count = headers:getNumValues("set-cookie")
  if count == 0 then
    return
  end
  local keep, sticky, session = {}, false, false
  for i = 0, count - 1 do
    local value = headers:getAtIndex("set-cookie", i)
    local name = string.match(value, "^%%s*([^=;%%s]+)=")
    if name == STICKY then
      sticky = true
    else
      if name ~= nil and SESSION_COOKIES[name] then
        session = true
      end
      table.insert(keep, value)
    end
  end
  if not sticky or session then
    return
  end
  local metadata = handle:streamInfo():dynamicMetadata():get("cf.sticky")
  if metadata ~= nil and metadata["session"] ~= nil then
    return
  end
  headers:remove("set-cookie")
  for _, value in ipairs(keep) do
    headers:add("set-cookie", value)
  end
end
"""


def sticky_lua(cookie_names: tuple[str, ...]) -> str:
    for name in cookie_names:
        if not COOKIE_NAME_RE.fullmatch(name) or name == STICKY_COOKIE:
            raise ValueError(f"{name!r} is not a usable session cookie name")
    names = ", ".join(f'["{name}"] = true' for name in cookie_names)
    return _STICKY_LUA % {"names": names, "sticky": STICKY_COOKIE}


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


def _lua(name: str, source: str) -> dict:
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def _set(header: str, value: str) -> dict:
    return {"append": {"header": {"key": header, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}


def build_router_filter(namespace: str, selector: dict[str, str], sticky_cookie_names: tuple[str, ...]) -> IstioObject:
    upstream_filters = [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [
                        # The route-service proxy's X-Forwarded-Proto for the app's route: used, then dropped.
                        {"remove": "x-cf-rs-forwarded-proto"},
                        # Set from the instance's metadata, or absent (a platform route's backend has none).
                        {"remove": "x-cf-instanceid"},
                        {"remove": "x-cf-instanceindex"},
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
            value=_struct(
                {
                    "name": _ROUTER,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        "upstream_http_filters": upstream_filters,
                    },
                }
            ),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.HTTP_FILTER,
        match=_hcm_match(_ROUTER),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.INSERT_BEFORE,
            value=_struct(
                {
                    "name": "envoy.filters.http.stateful_session",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
                        "session_state": {
                            "name": "envoy.http.stateful_session.cookie",
                            "typed_config": {
                                "@type": _COOKIE_STATE,
                                "cookie": {"name": STICKY_COOKIE, "path": "/"},
                            },
                        },
                    },
                }
            ),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.HTTP_FILTER,
        match=_hcm_match(),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.INSERT_FIRST,
            value=_struct(_lua("cf.sticky_sessions", sticky_lua(sticky_cookie_names))),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.NETWORK_FILTER,
        match=_hcm_match(),
        patch=pb.EnvoyFilter.Patch(
            operation=pb.EnvoyFilter.Patch.MERGE,
            value=_struct(
                {
                    "name": _HCM,
                    "typed_config": {
                        "@type": _HCM_TYPE,
                        "local_reply_config": {"mappers": _ROUTER_ERROR_MAPPERS},
                    },
                }
            ),
        ),
    )
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.CLUSTER,
        match=pb.EnvoyFilter.EnvoyConfigObjectMatch(
            context=pb.EnvoyFilter.GATEWAY, cluster=pb.EnvoyFilter.ClusterMatch(port_number=IDENTITY_SERVICE_PORT)
        ),
        patch=pb.EnvoyFilter.Patch(operation=pb.EnvoyFilter.Patch.MERGE, value=_struct(_IDENTITY_CHECK)),
    )
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
