"""Properties of what Cloud Controller may send: for any Route, RouteMapping or association message,
validation either accepts it and returns something normalised, or raises InvalidRoute naming a real
field of the message. Nothing else ever escapes (an unexpected exception would be a gRPC UNKNOWN)."""

from __future__ import annotations

import ipaddress
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from copilot.model import CCState, InvalidRoute
from copilot.protos import cc_copilot_pb2 as api
from copilot.sources import cc_validation
from copilot.sources.cc_api import bulk_state

# What a served hostname and path look like, written independently of copilot.model (\Z, not $).
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
STRICT_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\Z")
STRICT_PATH = re.compile(r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@%]+)*\Z")

# Protobuf strings are UTF-8: lone surrogates cannot be set at all, so they are left out.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
guids = st.one_of(st.just(""), st.uuids().map(str), any_text)
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
plausible_hosts = st.builds(
    lambda wildcard, labels, dot, pad: f"{pad}{'*.' if wildcard else ''}{'.'.join(labels)}{'.' if dot else ''}{pad}",
    st.booleans(),
    st.lists(label, min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from(["", " ", "\n", "\t"]),
)
hosts = st.one_of(
    plausible_hosts, ascii_text, any_text, st.just("a" * 64 + ".example.com"), st.just(("a" * 63 + ".") * 4 + "com")
)
plausible_paths = st.lists(
    st.one_of(st.from_regex(r"[A-Za-z0-9._~%-]{1,8}", fullmatch=True), st.sampled_from(["", ".", "..", "a?b", "a#b", "a b"])),
    max_size=4,
).map(lambda segments: "".join(f"/{s}" for s in segments))
paths = st.one_of(st.just(""), st.just("/"), plausible_paths, plausible_paths.map(lambda p: p + "/"), ascii_text, any_text)
vips = st.one_of(st.just(""), st.ip_addresses().map(str), ascii_text, st.just("fe80::1%eth0"))

route_messages = st.builds(api.Route, guid=guids, host=hosts, path=paths, internal=st.booleans(), vip=vips)
mapping_messages = st.builds(
    api.RouteMapping,
    capi_process_guid=guids,
    route_guid=guids,
    route_weight=st.one_of(st.integers(0, 130), st.integers(0, 2**32 - 1)),
)
association_messages = st.builds(
    api.CapiDiegoProcessAssociation, capi_process_guid=guids, diego_process_guids=st.lists(guids, max_size=5)
)


def _field_of(error: InvalidRoute, prefix: str, message_type) -> str:
    """The message field an InvalidRoute names, checking it is `<prefix>.<a real field>`."""
    assert str(error).startswith(f"{error.field}: ")
    assert error.field.startswith(f"{prefix}."), error.field
    name = error.field[len(prefix) + 1 :]
    assert name in message_type.DESCRIPTOR.fields_by_name, error.field
    return name


# ---------------------------------------------------------------- routes


@given(route_messages, st.sampled_from(["route", "routes[7]"]))
@example(api.Route(guid="g", host="a.example.com\n."), "route")  # `$` would match before that newline
@example(api.Route(guid="g", host="a.example.com", path="/a\n"), "route")
@example(api.Route(guid="g", host="K.example.com"), "route")  # the Kelvin sign lower-cases to ASCII "k"
@example(api.Route(guid="g", host="a.apps.internal", internal=True, vip="fe80::1%eth0"), "route")
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_route_is_normalised_or_refused_naming_its_field(message: api.Route, prefix: str) -> None:
    try:
        result = cc_validation.route(message, prefix)
    except InvalidRoute as error:
        name = _field_of(error, prefix, api.Route)
        assert name in ("guid", "host", "path", "vip")
        if not message.guid:
            assert name == "guid"
        elif not message.host:
            assert name == "host"
        return
    assert result.guid == message.guid != ""
    assert result.host == result.host.lower()
    assert STRICT_HOST.match(result.host) and len(result.host) <= 253, result.host
    assert result.path == "" or (result.path.startswith("/") and not result.path.endswith("/"))
    assert STRICT_PATH.match(result.path), result.path
    assert result.internal == message.internal
    if result.internal:
        assert result.path == "" and not result.host.startswith("*.")
        ipaddress.ip_address(result.vip)
    else:
        assert result.vip == ""
    # Normalising is idempotent: what came out is accepted unchanged.
    again = api.Route(guid=result.guid, host=result.host, path=result.path, internal=result.internal, vip=result.vip)
    assert cc_validation.route(again, prefix) == result


@given(plausible_hosts)
def test_plausible_hosts_are_accepted_lower_cased_whatever_their_case(host: str) -> None:
    stripped = host.strip().rstrip(".")
    if len(stripped) > 253:
        return
    result = cc_validation.route(api.Route(guid="g", host=host))
    assert result.host == stripped.lower()


# ---------------------------------------------------------------- mappings


@given(mapping_messages, st.sampled_from(["route_mapping", "route_mappings[0]"]))
def test_mapping_is_accepted_with_a_weight_in_range_or_refused_naming_its_field(message: api.RouteMapping, prefix: str) -> None:
    try:
        route_guid, capi_guid, weight = cc_validation.mapping(message, prefix)
    except InvalidRoute as error:
        name = _field_of(error, prefix, api.RouteMapping)
        if message.capi_process_guid and message.route_guid:
            assert name == "route_weight"
            assert not 1 <= message.route_weight <= 128
        return
    assert (route_guid, capi_guid, weight) == (message.route_guid, message.capi_process_guid, message.route_weight)
    assert route_guid and capi_guid
    assert 1 <= weight <= 128


# ---------------------------------------------------------------- associations


@given(association_messages, st.sampled_from(["capi_diego_process_association", "capi_diego_process_associations[3]"]))
def test_association_is_normalised_or_refused_naming_its_field(message: api.CapiDiegoProcessAssociation, prefix: str) -> None:
    try:
        capi_guid, diego_guids = cc_validation.association(message, prefix)
    except InvalidRoute as error:
        name = _field_of(error, prefix, api.CapiDiegoProcessAssociation)
        if message.capi_process_guid:
            assert name == "diego_process_guids"
            assert not message.diego_process_guids or "" in message.diego_process_guids
        return
    assert capi_guid == message.capi_process_guid != ""
    assert isinstance(diego_guids, tuple) and diego_guids
    assert list(diego_guids) == sorted(set(message.diego_process_guids))
    assert all(diego_guids)


# ---------------------------------------------------------------- a whole BulkSync


@given(
    st.builds(
        api.BulkSyncRequest,
        routes=st.lists(route_messages, max_size=4),
        route_mappings=st.lists(mapping_messages, max_size=4),
        capi_diego_process_associations=st.lists(association_messages, max_size=4),
    )
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_bulk_sync_is_all_valid_or_refused_naming_the_entry(request: api.BulkSyncRequest) -> None:
    try:
        state = bulk_state(request)
    except InvalidRoute as error:
        match = re.fullmatch(r"(routes|route_mappings|capi_diego_process_associations)\[(\d+)\]\.(\w+)", error.field)
        assert match, error.field
        repeated, index, name = match[1], int(match[2]), match[3]
        entries = getattr(request, repeated)
        assert index < len(entries)
        assert name in type(entries[index]).DESCRIPTOR.fields_by_name
        return
    assert isinstance(state, CCState)
    assert set(state.routes) == {r.guid for r in request.routes}
    assert set(state.mappings) == {(m.route_guid, m.capi_process_guid) for m in request.route_mappings}
    assert set(state.associations) == {a.capi_process_guid for a in request.capi_diego_process_associations}
