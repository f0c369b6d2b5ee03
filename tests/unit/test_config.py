"""Copilot's configuration file: a full valid file parses; every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from copilot.config import ConfigError, load, parse


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    names = ("ca.crt", "client.crt", "client.key", "mcp.crt", "mcp.key")
    for name in names:
        (tmp_path / name).write_text("pem\n")
    return {name: str(tmp_path / name) for name in names}


def full(files: dict[str, str]) -> dict:
    return {
        "bbs": {
            "url": "https://bbs.service.cf.internal:8889",
            "ca_cert": files["ca.crt"],
            "client_cert": files["client.crt"],
            "client_key": files["client.key"],
            "reconcile_interval_seconds": 15,
            "max_backoff_seconds": 2.5,
        },
        "mcp": {"listen": "0.0.0.0:15010", "tls": {"cert": files["mcp.crt"], "key": files["mcp.key"]}},
        "health": {"listen": "127.0.0.1:9000"},
        "gateway": {"namespace": "cf-system", "name": "router", "selector": {"app": "router"}, "http_port": 8080},
        "log_level": "debug",
    }


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return str(caught.value)


def test_full_config_parses(files: dict[str, str]) -> None:
    config = parse(full(files))
    assert config.bbs is not None
    assert config.bbs.url == "https://bbs.service.cf.internal:8889"
    assert config.bbs.ca_cert == Path(files["ca.crt"])
    assert config.bbs.client_cert == Path(files["client.crt"])
    assert config.bbs.client_key == Path(files["client.key"])
    assert (config.bbs.reconcile_interval_seconds, config.bbs.max_backoff_seconds) == (15, 2.5)
    assert config.mcp_listen == "0.0.0.0:15010"
    assert (
        config.mcp_tls is not None
        and config.mcp_tls.cert == Path(files["mcp.crt"])
        and config.mcp_tls.key == Path(files["mcp.key"])
    )
    assert config.health_listen == "127.0.0.1:9000"
    assert (config.gateway.namespace, config.gateway.name, config.gateway.selector, config.gateway.http_port) == (
        "cf-system",
        "router",
        {"app": "router"},
        8080,
    )
    assert config.gateway.ref == "cf-system/router"
    assert config.log_level == "debug"


def test_defaults() -> None:
    config = parse({})
    assert config.bbs is None
    assert config.mcp_listen == "127.0.0.1:15030"
    assert config.mcp_tls is None
    assert config.service_removal_delay == 30.0
    assert parse({"mcp": {"service_removal_delay_seconds": 0}}).service_removal_delay == 0
    assert config.health_listen == "127.0.0.1:8787"
    assert config.gateway.ref == "istio-system/cf-ingress"
    assert config.log_level == "info"


def test_bbs_defaults(files: dict[str, str]) -> None:
    data = full(files)
    del data["bbs"]["reconcile_interval_seconds"], data["bbs"]["max_backoff_seconds"]
    config = parse(data)
    assert config.bbs is not None
    assert (config.bbs.reconcile_interval_seconds, config.bbs.max_backoff_seconds) == (30.0, 10.0)


def _drop(data: dict, dotted: str) -> dict:
    *parents, leaf = dotted.split(".")
    node = data
    for parent in parents:
        node = node[parent]
    del node[leaf]
    return data


def _set(data: dict, dotted: str, value: object) -> dict:
    *parents, leaf = dotted.split(".")
    node = data
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    return data


@pytest.mark.parametrize("key", ["bbs.url", "bbs.ca_cert", "bbs.client_cert", "bbs.client_key", "mcp.tls.cert", "mcp.tls.key"])
def test_missing_required_key_is_named(files: dict[str, str], key: str) -> None:
    assert error_of(_drop(full(files), key)).startswith(f"{key}: is required")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("bbs.url", "http://bbs:8889", "must be an https:// URL"),
        ("bbs.url", "", "non-empty string"),
        ("bbs.url", 42, "non-empty string"),
        ("bbs.ca_cert", "/nonexistent/ca.crt", "does not exist"),
        ("bbs.client_key", "/nonexistent/client.key", "does not exist"),
        ("mcp.tls.cert", "/nonexistent/mcp.crt", "does not exist"),
        ("bbs.reconcile_interval_seconds", 0.5, "out of range"),
        ("bbs.reconcile_interval_seconds", "30", "must be a number"),
        ("bbs.max_backoff_seconds", True, "must be a number"),
        ("mcp.service_removal_delay_seconds", -1, "out of range"),
        ("mcp.service_removal_delay_seconds", 3601, "out of range"),
        ("mcp.service_removal_delay_seconds", float("nan"), "must be a finite number"),
        ("bbs.reconcile_interval_seconds", float("inf"), "must be a finite number"),
        ("mcp.service_removal_delay_seconds", "10s", "must be a number"),
        ("mcp.listen", "15010", "must be host:port"),
        ("mcp.listen", ":15010", "must be host:port"),
        ("mcp.listen", "127.0.0.1:http", "must be host:port"),
        ("mcp.listen", "127.0.0.1:70000", "must be host:port"),
        ("health.listen", "localhost", "must be host:port"),
        ("gateway.http_port", 0, "out of range"),
        ("gateway.http_port", 80.5, "must be an integer"),
        ("gateway.selector", {"app": 1}, "mapping of strings"),
        ("gateway.selector", ["app"], "mapping of strings"),
        ("gateway.namespace", "", "non-empty string"),
        ("log_level", "verbose", "is not one of"),
        ("log_level", "INFO", "is not one of"),
        ("bbs", "https://bbs", "must be a mapping"),
        ("mcp.tls", True, "must be a mapping"),
    ],
)
def test_bad_value_is_named(files: dict[str, str], key: str, value: object, expected: str) -> None:
    message = error_of(_set(full(files), key, value))
    assert message.startswith(f"{key}: ")
    assert expected in message


@pytest.mark.parametrize("key", ["bogus", "bbs.bogus", "mcp.tls.bogus", "health.port", "gateway.hosts"])
def test_unknown_key_is_named(files: dict[str, str], key: str) -> None:
    assert error_of(_set(full(files), key, 1)) == f"{key}: unknown key"


@pytest.mark.parametrize("root", [[1, 2], "text", 7])
def test_non_mapping_root(root: object) -> None:
    assert error_of(root) == "config: must be a mapping"


def test_load_yaml_and_json(tmp_path: Path, files: dict[str, str]) -> None:
    (tmp_path / "c.yml").write_text(yaml.safe_dump(full(files)))
    (tmp_path / "c.json").write_text(__import__("json").dumps(full(files)))
    assert load(tmp_path / "c.yml") == load(tmp_path / "c.json") == parse(full(files))


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "empty.yml").write_text("")
    assert load(tmp_path / "empty.yml") == parse({})


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.yml")
    (tmp_path / "broken.yml").write_text("bbs: [unclosed\n")
    with pytest.raises(ConfigError, match="is not YAML/JSON"):
        load(tmp_path / "broken.yml")
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="^config: must be a mapping"):
        load(tmp_path / "list.yml")


def test_bbs_liveness_and_withdrawal_hold(files: dict[str, str]) -> None:
    defaults = parse(full(files)).bbs
    assert defaults is not None
    assert (defaults.liveness_check_interval_seconds, defaults.withdrawal_hold_seconds) == (5.0, 120.0)
    assert (defaults.withdrawal_hold_fraction, defaults.withdrawal_hold_minimum) == (0.5, 3)
    data = full(files)
    data["bbs"].update(
        liveness_check_interval_seconds=0.5, withdrawal_hold_seconds=0, withdrawal_hold_fraction=0.8, withdrawal_hold_minimum=1
    )
    bbs = parse(data).bbs
    assert bbs is not None
    assert (bbs.liveness_check_interval_seconds, bbs.withdrawal_hold_seconds) == (0.5, 0)
    assert (bbs.withdrawal_hold_fraction, bbs.withdrawal_hold_minimum) == (0.8, 1)
    for key, value, problem in (
        ("liveness_check_interval_seconds", 0, "out of range"),
        ("withdrawal_hold_seconds", -1, "out of range"),
        ("withdrawal_hold_fraction", 1.5, "out of range"),
        ("withdrawal_hold_minimum", 0, "out of range"),
        ("withdrawal_hold_minimum", 2.5, "must be an integer"),
    ):
        message = error_of(_set(full(files), f"bbs.{key}", value))
        assert message.startswith(f"bbs.{key}: ") and problem in message
