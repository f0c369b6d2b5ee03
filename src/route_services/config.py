"""The route-service proxy's configuration file (JSON, rendered by the istio-router job): `load` reads
it, `parse` validates the mapping (daemon_kit.config's strict reader: a bad or unknown key is named in
the ConfigError). Defaults live on `Config`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from daemon_kit.config import ConfigError, Section, default, read


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every option of the proxy (the file's keys; client_cert/client_key are the *_file paths)."""

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
    """The config file at `path`, read and parsed."""
    return parse(read(path))


def parse(data: object) -> Config:
    """The proxy's settings from a mapping (the decoded file); raises ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("config: must be a JSON object")
    root = Section(data)

    def number(name: str, minimum: float, integer: bool = False) -> float:
        return root.number(name, default(Config, name), minimum=minimum, integer=integer)

    def string(name: str) -> str:
        return root.string(name, default(Config, name), empty=True)

    def boolean(name: str) -> bool:
        return root.boolean(name, default(Config, name))

    secret, decrypt_only = string("secret"), string("secret_decrypt_only")
    if decrypt_only and not secret:
        raise ConfigError("secret_decrypt_only: given without secret")
    ca_certs = root.string_list("ca_certs", [])
    if not all("-----BEGIN CERTIFICATE-----" in c for c in ca_certs):
        raise ConfigError("ca_certs: must be a list of PEM certificates")
    cert, key = (root.string(name, "", empty=True) for name in ("client_cert", "client_key"))
    if bool(cert) != bool(key):
        raise ConfigError("client_cert: give client_cert and client_key together")
    for name, path in (("client_cert", cert), ("client_key", key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}: file {path!r} does not exist")
    internal_lookup, internal_lookup_https = (
        _address(root, name) if root.string(name, "", empty=True) else None
        for name in ("internal_lookup", "internal_lookup_https")
    )
    config = Config(
        listen=_loopback(root, "listen"),
        gateway=_loopback(root, "gateway"),
        secret=secret,
        secret_decrypt_only=decrypt_only,
        local_token=string("local_token"),
        timeout_seconds=number("timeout_seconds", minimum=1),
        recommend_https=boolean("recommend_https"),
        ca_certs=tuple(ca_certs),
        skip_ssl_validation=boolean("skip_ssl_validation"),
        client_cert_file=Path(cert) if cert else None,
        client_key_file=Path(key) if key else None,
        max_attempts=int(number("max_attempts", minimum=1, integer=True)),
        connect_timeout_seconds=number("connect_timeout_seconds", minimum=0.1),
        request_timeout_seconds=number("request_timeout_seconds", minimum=1),
        log_level=root.log_level(),
        internal_lookup=internal_lookup,
        internal_lookup_https=internal_lookup_https,
    )
    root.done()
    if config.internal_lookup_https and not config.internal_lookup:
        raise ConfigError("internal_lookup_https: given without internal_lookup")
    if config.listen == config.gateway:
        raise ConfigError("gateway: is the proxy's own listen address")
    return config


def _address(root: Section, name: str) -> tuple[str, int]:
    """host:port with an IP address."""
    value = root.string(name)
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: {value!r} must be host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} must be an IP address and port") from None
    return host, int(port)


def _loopback(root: Section, name: str) -> tuple[str, int]:
    """host:port on a loopback address: the proxy trusts the route headers it is sent only because
    nothing but the router's own Envoy can reach it."""
    host, port = _address(root, name)
    if not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(f"{name}: {host}:{port} must be a loopback address")
    return host, port
