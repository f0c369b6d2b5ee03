"""The route-service proxy's configuration file (JSON, rendered by the istio-router job); bad input names the key."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending key."""


@dataclass(frozen=True)
class Config:
    # Where the proxy listens (loopback only: Envoy trusts what it says about routes, and it trusts
    # the route headers Copilot's routes set) and where Envoy's loopback Gateway server takes the
    # requests back that came back from their route service with a valid signature.
    listen: tuple[str, int]
    gateway: tuple[str, int]
    # Empty: route services are off and every request answers 502 route_service_unsupported.
    secret: str = ""
    secret_decrypt_only: str = ""
    # Required with every request when set: the token the job gives its Envoy (see the job's bpm.yml).
    local_token: str = ""
    timeout_seconds: float = 60.0
    recommend_https: bool = True
    # PEM CA certificates trusted for route services, besides the operating system's store.
    ca_certs: tuple[str, ...] = ()
    skip_ssl_validation: bool = False
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    max_attempts: int = 3
    connect_timeout_seconds: float = 5.0
    request_timeout_seconds: float = 900.0
    log_level: str = "info"
    # gorouter's route_services_internal_lookup: this router's own HTTP listener, where a request whose
    # route service is a route of the foundation (Copilot's route says so) goes; None: never. And its
    # HTTPS listener, for requests that reached the router over HTTPS (None: the router has none).
    internal_lookup: tuple[str, int] | None = None
    internal_lookup_https: tuple[str, int] | None = None


def load(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"config file {path} is not JSON: {error}") from None
    return parse(data)


def parse(data: object) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: must be a JSON object")
    known = set(Config.__dataclass_fields__) - {"client_cert_file", "client_key_file"} | {"client_cert", "client_key"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    defaults = Config(("127.0.0.1", 1), ("127.0.0.1", 1))
    secret = _string(data, "secret", "")
    decrypt_only = _string(data, "secret_decrypt_only", "")
    if decrypt_only and not secret:
        raise ConfigError("secret_decrypt_only: given without secret")
    ca_certs = data.get("ca_certs", [])
    if not isinstance(ca_certs, list) or not all(isinstance(c, str) and "-----BEGIN CERTIFICATE-----" in c for c in ca_certs):
        raise ConfigError("ca_certs: must be a list of PEM certificates")
    cert, key = data.get("client_cert"), data.get("client_key")
    if bool(cert) != bool(key):
        raise ConfigError("client_cert: give client_cert and client_key together")
    for name in ("client_cert", "client_key"):
        if data.get(name) and not (isinstance(data[name], str) and Path(data[name]).is_file()):
            raise ConfigError(f"{name}: file {data[name]!r} does not exist")
    level = _string(data, "log_level", defaults.log_level)
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    config = Config(
        listen=_loopback(data, "listen"),
        gateway=_loopback(data, "gateway"),
        secret=secret,
        secret_decrypt_only=decrypt_only,
        local_token=_string(data, "local_token", ""),
        timeout_seconds=_number(data, "timeout_seconds", defaults.timeout_seconds, minimum=1),
        recommend_https=_boolean(data, "recommend_https", defaults.recommend_https),
        ca_certs=tuple(ca_certs),
        skip_ssl_validation=_boolean(data, "skip_ssl_validation", defaults.skip_ssl_validation),
        client_cert_file=Path(cert) if cert else None,
        client_key_file=Path(key) if key else None,
        max_attempts=int(_number(data, "max_attempts", defaults.max_attempts, minimum=1, integer=True)),
        connect_timeout_seconds=_number(data, "connect_timeout_seconds", defaults.connect_timeout_seconds, minimum=0.1),
        request_timeout_seconds=_number(data, "request_timeout_seconds", defaults.request_timeout_seconds, minimum=1),
        log_level=level,
        internal_lookup=_address(data, "internal_lookup") if data.get("internal_lookup") else None,
        internal_lookup_https=_address(data, "internal_lookup_https") if data.get("internal_lookup_https") else None,
    )
    if config.internal_lookup_https and not config.internal_lookup:
        raise ConfigError("internal_lookup_https: given without internal_lookup")
    if config.listen == config.gateway:
        raise ConfigError("gateway: is the proxy's own listen address")
    return config


def _string(data: dict, name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string")
    return value


def _boolean(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false")
    return value


def _number(data: dict, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{name}: must be {'an integer' if integer else 'a number'}")
    if value < minimum:
        raise ConfigError(f"{name}: {value} is out of range")
    return value


def _address(data: dict, name: str) -> tuple[str, int]:
    """host:port with an IP address."""
    value = data.get(name)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be host:port")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: {value!r} must be host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} must be an IP address and port") from None
    return host, int(port)


def _loopback(data: dict, name: str) -> tuple[str, int]:
    """host:port on a loopback address: the proxy trusts the route headers it is sent only because
    nothing but the router's own Envoy can reach it."""
    if not isinstance(data.get(name), str):
        raise ConfigError(f"{name}: is required (host:port)")
    host, port = _address(data, name)
    if not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(f"{name}: {data[name]!r} must be a loopback address")
    return host, port
