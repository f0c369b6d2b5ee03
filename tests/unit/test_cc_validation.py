"""Properties of what Cloud Controller may send: for any Route, RouteMapping or association message,
validation either accepts it and returns something normalised, or raises InvalidRoute naming a real
field of the message. Nothing else ever escapes (an unexpected exception would be a gRPC UNKNOWN).
Every field is bounded, and a refusal of an oversized value does not repeat it."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from copilot.model import CCState, InvalidRoute
from copilot.protos import cc_copilot_pb2 as api
from copilot.sources import cc_validation
from copilot.sources.cc_api import bulk_state
from copilot.sources.cc_validation import (
    MAX_BULK_ENTRIES,
    MAX_DIEGO_PROCESS_GUIDS,
    MAX_GUID_LENGTH,
    MAX_HOST_LENGTH,
    MAX_PATH_LENGTH,
    MAX_VIP_LENGTH,
)

# What a served hostname and path look like, written independently of copilot.model (\Z, not $).
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
STRICT_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\Z")
STRICT_PATH = re.compile(r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@%]+)*\Z")

# Protobuf strings are UTF-8: lone surrogates cannot be set at all, so they are left out.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
guids = st.one_of(
    st.just(""), st.uuids().map(str), any_text, st.just("g" * MAX_GUID_LENGTH), st.just("g" * (MAX_GUID_LENGTH + 1))
)
label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
plausible_hosts = st.builds(
    lambda wildcard, labels, dot, pad: f"{pad}{'*.' if wildcard else ''}{'.'.join(labels)}{'.' if dot else ''}{pad}",
    st.booleans(),
    st.lists(label, min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from(["", " ", "\n", "\t"]),
)
hosts = st.one_of(
    plausible_hosts,
    ascii_text,
    any_text,
    st.just("a" * 64 + ".example.com"),
    st.just(("a" * 63 + ".") * 4 + "com"),
    st.just(("a" * 62 + ".") * 4 + "a."),  # 253 characters and the trailing dot
    st.just("a." * 2000),
)
plausible_paths = st.lists(
    st.one_of(st.from_regex(r"[A-Za-z0-9._~%-]{1,8}", fullmatch=True), st.sampled_from(["", ".", "..", "a?b", "a#b", "a b"])),
    max_size=4,
).map(lambda segments: "".join(f"/{s}" for s in segments))
paths = st.one_of(
    st.just(""),
    st.just("/"),
    plausible_paths,
    plausible_paths.map(lambda p: p + "/"),
    ascii_text,
    any_text,
    st.just("/a" * (MAX_PATH_LENGTH // 2)),
    st.just("/a" * (MAX_PATH_LENGTH // 2) + "b"),
)
vips = st.one_of(st.just(""), st.ip_addresses().map(str), ascii_text, st.just("fe80::1%eth0"), st.just("1" * 5000))

route_messages = st.builds(api.Route, guid=guids, host=hosts, path=paths, internal=st.booleans(), vip=vips)
mapping_messages = st.builds(
    api.RouteMapping,
    capi_process_guid=guids,
    route_guid=guids,
    route_weight=st.one_of(st.integers(0, 130), st.integers(0, 2**32 - 1)),
)
association_messages = st.builds(
    api.CapiDiegoProcessAssociation,
    capi_process_guid=guids,
    diego_process_guids=st.one_of(
        st.lists(guids, max_size=5),
        st.integers(MAX_DIEGO_PROCESS_GUIDS, MAX_DIEGO_PROCESS_GUIDS + 1).map(lambda n: [f"d-{i}" for i in range(n)]),
    ),
)

# What a refusal may say: the field, a short reason and at most one value, itself within its bound.
MAX_ERROR_LENGTH = 2 * MAX_PATH_LENGTH


def _field_of(error: InvalidRoute, prefix: str, message_type) -> str:
    """The message field an InvalidRoute names, checking it is `<prefix>.<a real field>`."""
    assert str(error).startswith(f"{error.field}: ")
    assert len(str(error)) < MAX_ERROR_LENGTH, str(error)[:200]
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
        if not message.guid or len(message.guid) > MAX_GUID_LENGTH:
            assert name == "guid"
        elif not message.host or len(message.host) > MAX_HOST_LENGTH:
            assert name == "host"
        return
    assert len(message.guid) <= MAX_GUID_LENGTH and len(message.host) <= MAX_HOST_LENGTH
    assert len(message.path) <= MAX_PATH_LENGTH and len(result.vip) <= MAX_VIP_LENGTH
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
    if len(stripped) > 253 or len(host) > MAX_HOST_LENGTH:
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
        if all(0 < len(g) <= MAX_GUID_LENGTH for g in (message.capi_process_guid, message.route_guid)):
            assert name == "route_weight"
            assert not 1 <= message.route_weight <= 128
        return
    assert (route_guid, capi_guid, weight) == (message.route_guid, message.capi_process_guid, message.route_weight)
    assert 0 < len(route_guid) <= MAX_GUID_LENGTH and 0 < len(capi_guid) <= MAX_GUID_LENGTH
    assert 1 <= weight <= 128


# ---------------------------------------------------------------- associations


@given(association_messages, st.sampled_from(["capi_diego_process_association", "capi_diego_process_associations[3]"]))
def test_association_is_normalised_or_refused_naming_its_field(message: api.CapiDiegoProcessAssociation, prefix: str) -> None:
    try:
        capi_guid, diego_guids = cc_validation.association(message, prefix)
    except InvalidRoute as error:
        name = _field_of(error, prefix, api.CapiDiegoProcessAssociation)
        if 0 < len(message.capi_process_guid) <= MAX_GUID_LENGTH:
            assert name == "diego_process_guids"
            diego = message.diego_process_guids
            assert not diego or "" in diego or len(diego) > MAX_DIEGO_PROCESS_GUIDS or max(map(len, diego)) > MAX_GUID_LENGTH
        return
    assert capi_guid == message.capi_process_guid != ""
    assert isinstance(diego_guids, tuple) and diego_guids
    assert list(diego_guids) == sorted(set(message.diego_process_guids))
    assert all(0 < len(g) <= MAX_GUID_LENGTH for g in diego_guids) and len(diego_guids) <= MAX_DIEGO_PROCESS_GUIDS
    assert 0 < len(capi_guid) <= MAX_GUID_LENGTH


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
    assert bulk_state(request, state) == state  # taken from what the slice holds, the same state


# ---------------------------------------------------------------- the bounds, at and past their edge

FIFTEEN_MB = 15 << 20


@pytest.mark.parametrize(
    ("message", "field", "reason"),
    [
        (api.Route(guid="g" * FIFTEEN_MB, host="a.example.com"), "route.guid", f"{FIFTEEN_MB} characters, more than 256"),
        (api.Route(guid="g", host="a" * FIFTEEN_MB), "route.host", f"{FIFTEEN_MB} characters, more than 254"),
        (api.Route(guid="g", host="a.example.com", path="/a" * 513), "route.path", "1026 characters, more than 1024"),
        (api.Route(guid="g", host="a.apps.internal", internal=True, vip="1" * 65), "route.vip", "65 characters, more than 64"),
    ],
    ids=["guid", "host", "path", "vip"],
)
def test_an_oversized_route_field_is_refused_without_repeating_it(message: api.Route, field: str, reason: str) -> None:
    with pytest.raises(InvalidRoute) as refused:
        cc_validation.route(message)
    assert (refused.value.field, str(refused.value)) == (field, f"{field}: {reason}")


def test_route_fields_at_their_bound_are_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters
    result = cc_validation.route(api.Route(guid="g" * MAX_GUID_LENGTH, host=host + ".", path="/a" * (MAX_PATH_LENGTH // 2)))
    assert (len(result.guid), result.host, len(result.path)) == (MAX_GUID_LENGTH, host, MAX_PATH_LENGTH)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (api.RouteMapping(capi_process_guid="c" * FIFTEEN_MB, route_guid="r", route_weight=1), "route_mapping.capi_process_guid"),
        (api.RouteMapping(capi_process_guid="c", route_guid="r" * 257, route_weight=1), "route_mapping.route_guid"),
    ],
)
def test_an_oversized_mapping_guid_is_refused(message: api.RouteMapping, field: str) -> None:
    with pytest.raises(InvalidRoute, match=r"characters, more than 256$") as refused:
        cc_validation.mapping(message)
    assert refused.value.field == field


def test_an_association_of_400k_guids_or_of_a_long_guid_is_refused() -> None:
    field = "capi_diego_process_association"
    huge = api.CapiDiegoProcessAssociation(capi_process_guid="c", diego_process_guids=[f"c-{i}" for i in range(400_000)])
    with pytest.raises(InvalidRoute) as refused:
        cc_validation.association(huge)
    assert str(refused.value) == f"{field}.diego_process_guids: 400000 entries, more than {MAX_DIEGO_PROCESS_GUIDS}"
    with pytest.raises(InvalidRoute, match=r"^capi_diego_process_association.diego_process_guids: 257 characters"):
        cc_validation.association(api.CapiDiegoProcessAssociation(capi_process_guid="c", diego_process_guids=["d" * 257]))
    with pytest.raises(InvalidRoute, match=r"^capi_diego_process_association.capi_process_guid: 257 characters"):
        cc_validation.association(api.CapiDiegoProcessAssociation(capi_process_guid="c" * 257, diego_process_guids=["d"]))
    full = api.CapiDiegoProcessAssociation(
        capi_process_guid="c", diego_process_guids=[f"{i:0256d}" for i in range(MAX_DIEGO_PROCESS_GUIDS)]
    )
    assert len(cc_validation.association(full)[1]) == MAX_DIEGO_PROCESS_GUIDS


@pytest.mark.parametrize("repeated", ["routes", "route_mappings", "capi_diego_process_associations"])
def test_a_bulk_sync_list_longer_than_its_bound_is_refused_before_its_entries_are_read(repeated: str) -> None:
    tag = {"route_mappings": b"\x0a\x00", "routes": b"\x12\x00", "capi_diego_process_associations": b"\x1a\x00"}[repeated]
    request = api.BulkSyncRequest.FromString(tag * (MAX_BULK_ENTRIES + 1))  # empty entries, each invalid
    with pytest.raises(InvalidRoute) as refused:
        bulk_state(request)
    assert str(refused.value) == f"{repeated}: {MAX_BULK_ENTRIES + 1} entries, more than {MAX_BULK_ENTRIES}"


def test_a_repeated_bulk_sync_takes_what_it_repeats_from_the_slice() -> None:
    request = api.BulkSyncRequest(
        routes=[api.Route(guid="r1", host="a.example.com"), api.Route(guid="r2", host="b.example.com")],
        route_mappings=[api.RouteMapping(route_guid="r1", capi_process_guid="c1", route_weight=1)],
        capi_diego_process_associations=[api.CapiDiegoProcessAssociation(capi_process_guid="c1", diego_process_guids=["d1"])],
    )
    known = bulk_state(request)
    request.routes[1].host = "moved.example.com"
    again = bulk_state(request, known)
    assert again.routes["r1"] is known.routes["r1"]  # equal: the slice's own object
    assert again.routes["r2"].host == "moved.example.com"  # changed: the new one
    assert again.associations["c1"] is known.associations["c1"]
    [(route_guid, capi_guid)] = again.mappings
    assert route_guid is again.routes["r1"].guid and capi_guid is next(iter(known.associations))
