"""The SDS server's configuration file (YAML or JSON); bad input names the key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending key."""


@dataclass(frozen=True)
class PemSource:
    """PEM text given inline, or the path of a file holding it (re-read on every poll)."""

    inline: str | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.inline is not None:
            return self.inline.encode()
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True)
class CertificateConfig:
    name: str
    certificate_chain: PemSource
    private_key: PemSource


@dataclass(frozen=True)
class Config:
    listen: str
    certificates: tuple[CertificateConfig, ...]
    poll_interval_seconds: float = 5.0
    file_cert_dir: str | None = None
    log_level: str = "info"
    # CA bundles served as istiod's `file-root:<path>` validation contexts (a DestinationRule's
    # caCertificates path on the router), re-read on every poll.
    trusted_ca_files: tuple[Path, ...] = ()


def load(path: str | Path) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not YAML/JSON: {error}") from None
    return parse(data if data is not None else {})


def _pem(entry: dict, key: str, prefix: str, marker: str) -> PemSource:
    inline, file_key = entry.get(key), f"{key}_file"
    path = entry.get(file_key)
    if (inline is None) == (path is None):
        raise ConfigError(f"{prefix}.{key}: give exactly one of {key} (PEM) or {file_key} (a path)")
    if inline is not None:
        if not isinstance(inline, str) or "-----BEGIN" not in inline or marker not in inline:
            raise ConfigError(f"{prefix}.{key}: is not a PEM {marker.strip('-').strip().lower()}")
        return PemSource(inline=inline)
    if not isinstance(path, str) or not Path(path).is_file():
        raise ConfigError(f"{prefix}.{file_key}: file {path} does not exist")
    return PemSource(path=Path(path))


def parse(data: object) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: must be a mapping")
    known = {"listen", "certificates", "poll_interval_seconds", "file_cert_dir", "log_level", "trusted_ca_files"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    listen = data.get("listen")
    if not isinstance(listen, str) or not listen:
        raise ConfigError("listen: is required (unix:///path/to/socket or host:port)")
    if listen.startswith("unix:"):
        if not listen.removeprefix("unix:").lstrip("/"):
            raise ConfigError(f"listen: {listen!r} has no socket path")
    else:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"listen: {listen!r} must be unix:///path or host:port")
    raw_certs = data.get("certificates") or []
    if not isinstance(raw_certs, list):
        raise ConfigError("certificates: must be a list")
    certificates = []
    seen: set[str] = set()
    for index, entry in enumerate(raw_certs):
        prefix = f"certificates[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{prefix}: must be a mapping with name, certificate_chain and private_key")
        extra = sorted(set(entry) - {"name", "certificate_chain", "certificate_chain_file", "private_key", "private_key_file"})
        if extra:
            raise ConfigError(f"{prefix}.{extra[0]}: unknown key")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{prefix}.name: is required (the SDS resource name)")
        if name in seen:
            raise ConfigError(f"{prefix}.name: {name!r} is given twice")
        seen.add(name)
        certificates.append(CertificateConfig(
            name,
            _pem(entry, "certificate_chain", prefix, "CERTIFICATE-----"),
            _pem(entry, "private_key", prefix, "PRIVATE KEY-----"),
        ))
    poll = data.get("poll_interval_seconds", 5.0)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
        raise ConfigError("poll_interval_seconds: must be a positive number")
    file_cert_dir = data.get("file_cert_dir")
    if file_cert_dir is not None and (not isinstance(file_cert_dir, str) or not file_cert_dir.startswith("/")):
        raise ConfigError("file_cert_dir: must be an absolute path")
    log_level = data.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    raw_cas = data.get("trusted_ca_files") or []
    if not isinstance(raw_cas, list) or not all(isinstance(p, str) and p.startswith("/") for p in raw_cas):
        raise ConfigError("trusted_ca_files: must be a list of absolute paths")
    return Config(
        listen,
        tuple(certificates),
        float(poll),
        file_cert_dir.rstrip("/") if file_cert_dir else None,
        log_level,
        tuple(Path(p) for p in raw_cas),
    )
