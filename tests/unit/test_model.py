"""The route model: hostname and context-path validation, ports, backends and weight normalisation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copilot.model import (
    SSH_PORT,
    Backend,
    Destination,
    HostRoutes,
    Instance,
    InvalidRoute,
    PortMapping,
    normalize_hostname,
    normalize_path,
    normalize_weights,
    split_route_hostname,
    validate_port,
)

# ---------------------------------------------------------------- hostnames


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("app.example.com.", "app.example.com"),
        ("  app.example.com ", "app.example.com"),
        ("*.Example.com", "*.example.com"),
        ("a", "a"),
        ("x-1.y-2.example", "x-1.y-2.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_hostname_is_normalised(raw: str, expected: str) -> None:
    assert normalize_hostname(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "exa_mple.com",
        "exa mple.com",
        "-app.example.com",
        "app-.example.com",
        "app..example.com",
        "app.*.example.com",
        "*",
        "*example.com",
        "a" * 64 + ".com",  # a label longer than 63
        ".".join(["a" * 60] * 5),  # longer than 253 in total
        "héllo.example.com",
        "app.example.com/path",
        None,
        42,
    ],
)
def test_invalid_hostname_names_the_field(raw: object) -> None:
    with pytest.raises(InvalidRoute) as caught:
        normalize_hostname(raw, "cf-router.hostnames")
    assert caught.value.field == "cf-router.hostnames"
    assert str(caught.value).startswith("cf-router.hostnames: ")


def test_invalid_route_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="^hostname: "):
        normalize_hostname("bad_host")


# ---------------------------------------------------------------- context paths


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("", ""),
        ("/", ""),
        ("//", ""),
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api/v1", "/api/v1"),
        ("/api/v1///", "/api/v1"),
        ("/a%20b/~x/y.z", "/a%20b/~x/y.z"),
        ("/CaseKept", "/CaseKept"),
    ],
)
def test_context_path_is_normalised(raw: object, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["api", "api/v1", "/api/../admin", "/..", "/.", "/api/./x", "/api?x=1", "/api#frag", "/a//b", "/a b", 7],
)
def test_invalid_context_path_names_the_field(raw: object) -> None:
    with pytest.raises(InvalidRoute) as caught:
        normalize_path(raw, "route.path")
    assert caught.value.field == "route.path"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("App.Example.com", ("app.example.com", "")),
        ("app.example.com/", ("app.example.com", "")),
        ("app.example.com/api", ("app.example.com", "/api")),
        ("App.example.com/api/V2/", ("app.example.com", "/api/V2")),
        ("*.example.com/x", ("*.example.com", "/x")),
    ],
)
def test_split_route_hostname(raw: str, expected: tuple[str, str]) -> None:
    assert split_route_hostname(raw) == expected


@pytest.mark.parametrize("raw", ["bad_host/api", "app.example.com/../x", "app.example.com/a?b", "/api", 5, None])
def test_split_route_hostname_rejects_bad_input_naming_the_field(raw: object) -> None:
    with pytest.raises(InvalidRoute) as caught:
        split_route_hostname(raw, "cf-router.hostnames")
    assert caught.value.field == "cf-router.hostnames"


# ---------------------------------------------------------------- ports


@pytest.mark.parametrize("port", [1, 80, 8080, 65535])
def test_valid_ports(port: int) -> None:
    assert validate_port(port, "port") == port


@pytest.mark.parametrize("port", [0, -1, 65536, True, "8080", 8080.0, None])
def test_invalid_ports(port: object) -> None:
    with pytest.raises(InvalidRoute) as caught:
        validate_port(port, "cf-router.port")
    assert caught.value.field == "cf-router.port"


def test_ssh_port_is_refused() -> None:
    with pytest.raises(InvalidRoute, match="2222") as caught:
        validate_port(SSH_PORT, "tcp-router.container_port")
    assert caught.value.field == "tcp-router.container_port"


# ---------------------------------------------------------------- instances and backends


def _instance(**overrides: object) -> Instance:
    fields: dict[str, object] = {
        "process_guid": "pg",
        "index": 3,
        "instance_guid": "ig",
        "state": "RUNNING",
        "routable": True,
        "address": "10.0.0.1",
        "instance_address": "10.255.0.7",
        "prefer_instance_address": False,
        "ports": (
            PortMapping(8080, 61001, 61443, 61002),
            PortMapping(9090, 61003),
            PortMapping(SSH_PORT, 61004),
        ),
        "availability_zone": "z1",
    }
    fields.update(overrides)
    return Instance(**fields)  # type: ignore[arg-type]


def test_backend_uses_host_address_and_host_ports_by_default() -> None:
    assert _instance().backend_for(8080) == Backend("10.0.0.1", 61001, 61002, "ig", 3, "z1")


def test_backend_uses_instance_address_and_container_ports_when_preferred() -> None:
    assert _instance(prefer_instance_address=True).backend_for(8080) == Backend("10.255.0.7", 8080, 61443, "ig", 3, "z1")


def test_preferred_instance_address_falls_back_to_host_when_missing() -> None:
    backend = _instance(prefer_instance_address=True, instance_address="").backend_for(8080)
    assert backend is not None
    assert (backend.address, backend.port) == ("10.0.0.1", 61001)


def test_backend_without_tls_proxy_has_tls_port_zero() -> None:
    backend = _instance().backend_for(9090)
    assert backend is not None
    assert (backend.port, backend.tls_port) == (61003, 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"state": "CLAIMED"},
        {"state": "CRASHED"},
        {"state": "UNCLAIMED"},
        {"routable": False},
        {"address": ""},
        {"ports": (PortMapping(8080, 0),)},
    ],
)
def test_no_backend_when_not_serving_or_unreachable(overrides: dict[str, object]) -> None:
    assert _instance(**overrides).backend_for(8080) is None


def test_no_backend_for_unexposed_port_or_ssh() -> None:
    instance = _instance()
    assert instance.backend_for(7070) is None
    assert instance.backend_for(SSH_PORT) is None


def test_serving() -> None:
    assert _instance().serving
    assert not _instance(routable=False).serving
    assert not _instance(state="CRASHED").serving


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([], []),
        ([7], [100]),
        ([1, 3], [25, 75]),
        ([1, 1, 1], [34, 33, 33]),
        ([1, 1, 1, 1, 1, 1], [17, 17, 17, 17, 16, 16]),
        ([2, 1], [67, 33]),
        ([1, 2], [33, 67]),
        ([1000, 1], [99, 1]),
        ([1] * 150, [1] * 150),
    ],
)
def test_normalize_weights_examples(weights: list[int], expected: list[int]) -> None:
    assert normalize_weights(weights) == expected


@pytest.mark.parametrize("weights", [[0], [1, 0], [3, -1]])
def test_normalize_weights_rejects_non_positive(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        normalize_weights(weights)


weight_lists = st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=99)


@given(weight_lists)
def test_normalized_weights_sum_to_100_and_stay_positive(weights: list[int]) -> None:
    result = normalize_weights(weights)
    assert len(result) == len(weights)
    assert sum(result) == 100
    assert all(w >= 1 for w in result)


@given(weight_lists)
def test_normalized_weights_are_proportional(weights: list[int]) -> None:
    total = sum(weights)
    exact = [w * 100 / total for w in weights]
    result = normalize_weights(weights)
    if all(x >= 1 for x in exact):
        # Largest remainder: every share is its exact value rounded down or up.
        assert all(abs(r - x) < 1 for r, x in zip(result, exact, strict=True))
    else:
        # Shares that had to be raised to 1 are paid for by the others, never by more than that.
        boost = sum(1 - x for x in exact if x < 1)
        assert all(abs(r - x) < 1 + boost for r, x in zip(result, exact, strict=True))


@given(weight_lists)
def test_normalized_weights_keep_the_order_of_the_input(weights: list[int]) -> None:
    result = normalize_weights(weights)
    for i in range(len(weights)):
        for j in range(len(weights)):
            if weights[i] > weights[j]:
                assert result[i] >= result[j]
            if weights[i] == weights[j] and i < j:
                # equal weights: ties go to the earlier destination
                assert result[i] >= result[j]


@given(weight_lists, st.integers(min_value=2, max_value=50))
def test_normalized_weights_are_scale_invariant(weights: list[int], factor: int) -> None:
    assert normalize_weights([w * factor for w in weights]) == normalize_weights(weights)


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=100, max_size=300))
def test_many_destinations_all_get_weight_one(weights: list[int]) -> None:
    assert normalize_weights(weights) == [1] * len(weights)


def _view() -> HostRoutes:
    backends = [Backend("10.0.0.1", 61000, 61001, "g-0", 0, "z1"), Backend("10.0.0.2", 61000, 61001, "g-1", 1, "z1")]
    return HostRoutes("a.example.com", {"": [Destination("p", 8080, 1, "http1", backends, "", "app", "", "")]})


def _other(value: object) -> object:
    """A value of the same type as `value` that differs from it."""
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, int):
        return value + 1
    return [*value, Backend("10.0.0.3", 61000)]  # backends


def test_a_view_fingerprint_changes_with_every_field_of_every_destination() -> None:
    """The publisher skips a host whose view has its last build's fingerprint: a change of any field
    (a field added later too) must change it."""
    assert _view().fingerprint() == _view().fingerprint()
    for f in dataclasses.fields(Destination):
        view = _view()
        [dest] = view.paths[""]
        setattr(dest, f.name, _other(getattr(dest, f.name)))
        assert view.fingerprint() != _view().fingerprint(), f.name
    for name in Backend._fields:
        view = _view()
        [dest] = view.paths[""]
        dest.backends[1] = dest.backends[1]._replace(**{name: _other(getattr(dest.backends[1], name))})
        assert view.fingerprint() != _view().fingerprint(), name
    view = _view()
    view.paths["/p"] = view.paths.pop("")  # the path
    assert view.fingerprint() != _view().fingerprint()
    assert HostRoutes("b.example.com", _view().paths).fingerprint() != _view().fingerprint()
    view = _view()
    view.paths[""].append(Destination("q", 8080))  # another destination
    assert view.fingerprint() != _view().fingerprint()
