"""Backends routes must not reach: loopback, link-local and unspecified addresses are refused by every
source (BBS instances, registrar registrations) unless the operator's allow-list
(backends.allowed_internal_networks) names them; the allow-list is read from Copilot's config file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from copilot import model
from copilot.config import BackendsConfig, ConfigError, parse
from copilot.model import BackendAddresses, InvalidRoute
from copilot.sources.registrar_api import parse_registrations

REFUSED = [
    "127.0.0.1", "127.255.255.254", "::1", "169.254.169.254", "169.254.0.1", "fe80::1", "febf:ffff::1", "0.0.0.0",
    "0.0.0.1", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0",
]
ROUTED = ["10.0.16.10", "192.168.0.1", "172.31.255.255", "100.64.0.1", "128.0.0.1", "169.255.0.1", "fec0::1", "fd00::1",
          "2001:db8::1", "::ffff:10.0.0.1"]


@pytest.fixture
def allow_list() -> Iterator[None]:
    yield
    model.allow_internal_networks(())


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused_by_default(address: str) -> None:
    with pytest.raises(InvalidRoute) as caught:
        BackendAddresses().check(address, "x.address")
    assert caught.value.field == "x.address"
    assert "backends.allowed_internal_networks" in str(caught.value)


@pytest.mark.parametrize("address", ROUTED)
def test_other_addresses_are_routed(address: str) -> None:
    assert BackendAddresses().check(address, "x.address") == address


@pytest.mark.parametrize("address", ["", "not-an-ip", "999.1.1.1", "10.0.0.01", "fe80::1%eth0", "1" * 10_000, None, 10])
def test_what_is_not_an_ip_address_is_refused_with_a_short_message(address: object) -> None:
    with pytest.raises(InvalidRoute, match="is not an IP address") as caught:
        BackendAddresses(["0.0.0.0/0", "::/0"]).check(address, "x.address")
    assert len(str(caught.value)) < 120


def test_an_allowed_network_lets_only_its_addresses_through() -> None:
    addresses = BackendAddresses(["127.0.0.0/8", "fe80::/64"])
    assert addresses.check("127.1.0.5", "a") == "127.1.0.5"
    assert addresses.check("::ffff:127.0.0.1", "a") == "::ffff:127.0.0.1"
    assert addresses.check("fe80::5", "a") == "fe80::5"
    for refused in ("169.254.169.254", "::1", "fe80:0:0:1::5", "0.0.0.0"):
        with pytest.raises(InvalidRoute):
            addresses.check(refused, "a")


# ---------------------------------------------------------------- the registrar API


def registration(address: str) -> dict:
    return {"registrations": [{"host": "api.sys.example.com", "address": "10.0.16.10", "port": 9022},
                              {"host": "uaa.sys.example.com", "address": address, "port": 15000}]}


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"])
def test_the_registrar_refuses_an_internal_backend_naming_the_field(address: str) -> None:
    with pytest.raises(InvalidRoute) as caught:
        parse_registrations(registration(address))
    assert caught.value.field == "registrations[1].address"
    assert str(caught.value).startswith("registrations[1].address: ")


def test_the_registrar_accepts_an_internal_backend_the_allow_list_names(allow_list: None) -> None:
    model.allow_internal_networks(["127.0.0.0/8"])
    parsed = parse_registrations(registration("127.0.0.1"))
    assert [r.address for r, _ in parsed] == ["10.0.16.10", "127.0.0.1"]
    with pytest.raises(InvalidRoute, match=r"registrations\[1\].address"):
        parse_registrations(registration("169.254.169.254"))


# ---------------------------------------------------------------- the configuration


def test_the_allow_list_is_empty_by_default() -> None:
    assert parse({}).backends == BackendsConfig(())


def test_the_allow_list_is_read_and_normalised() -> None:
    config = parse({"backends": {"allowed_internal_networks": ["127.0.0.0/8", "169.254.169.254", "FE80::/10"]}})
    assert config.backends.allowed_internal_networks == ("127.0.0.0/8", "169.254.169.254/32", "fe80::/10")


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ({"allowed_internal_networks": ["127.0.0.1/8"]}, r"backends.allowed_internal_networks: '127.0.0.1/8' is not a network"),
        ({"allowed_internal_networks": ["loopback"]}, r"backends.allowed_internal_networks: 'loopback' is not a network"),
        ({"allowed_internal_networks": "127.0.0.0/8"}, r"backends.allowed_internal_networks: must be a list"),
        ({"allowed": []}, r"backends.allowed: unknown key"),
    ],
)
def test_a_bad_allow_list_names_the_key(backends: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"backends": backends})


def test_copilot_applies_the_allow_list_of_its_config(allow_list: None) -> None:
    from copilot.main import Copilot

    listen = {"mcp": {"listen": "127.0.0.1:0"}, "health": {"listen": "127.0.0.1:0"}}
    for config, loopback_allowed in ((parse({**listen, "backends": {"allowed_internal_networks": ["127.0.0.0/8"]}}), True),
                                     (parse(listen), False)):
        Copilot(config).publish_loop.stop()  # built, not started
        if loopback_allowed:
            assert model.check_backend_address("127.0.0.1", "a") == "127.0.0.1"
        else:
            with pytest.raises(InvalidRoute):
                model.check_backend_address("127.0.0.1", "a")


def test_the_cheap_first_look_never_misses_an_internal_network() -> None:
    """BackendAddresses looks at a few bytes before the networks (it runs for every listed instance):
    every address of INTERNAL_NETWORKS, first and last, must get past that look, and be refused."""
    import ipaddress

    for network in model.INTERNAL_NETWORKS:
        for ip in (network.network_address, network.broadcast_address, network.network_address + network.num_addresses // 2):
            with pytest.raises(InvalidRoute):
                BackendAddresses().check(str(ip), "a")
            if ip.version == 4:
                with pytest.raises(InvalidRoute):
                    BackendAddresses().check(f"::ffff:{ip}", "a")
        kind = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
        for outside in (int(network.network_address) - 1, int(network.broadcast_address) + 1):
            if not 0 <= outside < 2**network.max_prefixlen:
                continue
            address = kind(outside)
            if not any(address in n for n in model.INTERNAL_NETWORKS if n.version == address.version):
                assert BackendAddresses().check(str(address), "a") == str(address)
    assert BackendAddresses().check("::2", "a") == "::2"  # ::/127 is looked at, only :: and ::1 are refused
