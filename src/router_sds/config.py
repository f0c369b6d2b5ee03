"""The SDS server's configuration file (YAML or JSON): `load` reads it, `parse` validates the mapping
(daemon_kit.config's strict reader: a bad or unknown key is named in the ConfigError)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from daemon_kit.config import ConfigError, Section, default, read


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
    """One secret served: its SDS resource name, and where its PEM chain and key come from."""

    name: str
    certificate_chain: PemSource
    private_key: PemSource


@dataclass(frozen=True)
class Config:
    """unix:///path or host:port to listen on, and the certificates served (by SDS resource name)."""

    listen: str
    certificates: tuple[CertificateConfig, ...] = ()
    poll_interval_seconds: float = 5.0
    file_cert_dir: str | None = None
    log_level: str = "info"
    # CA bundles served as istiod's `file-root:<path>` validation contexts (a DestinationRule's
    # caCertificates path on the router), re-read on every poll.
    trusted_ca_files: tuple[Path, ...] = ()


def load(path: str | Path) -> Config:
    """The config file at `path` (YAML, or JSON, its subset), read and parsed; an empty file has no `listen`."""
    data = read(path, yaml.safe_load, "YAML/JSON", (yaml.YAMLError,))
    return parse(data if data is not None else {})


def parse(data: object) -> Config:
    """The server's settings from a mapping (the decoded file); raises ConfigError naming the first bad key."""
    root = Section(data)
    listen = root.string("listen", "")
    if not listen:
        raise ConfigError("listen: is required (unix:///path/to/socket or host:port)")
    if listen.startswith("unix:"):
        if not listen.removeprefix("unix:").lstrip("/"):
            raise ConfigError(f"listen: {listen!r} has no socket path")
    else:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"listen: {listen!r} must be unix:///path or host:port")
    certificates = []
    seen: set[str] = set()
    for index, entry in enumerate(root.list("certificates")):
        prefix = f"certificates[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{prefix}: must be a mapping with name, certificate_chain and private_key")
        section = Section(entry, prefix)
        name = section.string("name", "", empty=True)
        if not name:
            raise ConfigError(f"{prefix}.name: is required (the SDS resource name)")
        if name in seen:
            raise ConfigError(f"{prefix}.name: {name!r} is given twice")
        seen.add(name)
        certificates.append(
            CertificateConfig(
                name,
                _pem(section, "certificate_chain", "CERTIFICATE-----"),
                _pem(section, "private_key", "PRIVATE KEY-----"),
            )
        )
        section.done()
    poll = root.number("poll_interval_seconds", default(Config, "poll_interval_seconds"), above=0)
    file_cert_dir = root.string("file_cert_dir", "") or None
    if file_cert_dir is not None and not file_cert_dir.startswith("/"):
        raise ConfigError("file_cert_dir: must be an absolute path")
    log_level = root.log_level()
    cas = root.string_list("trusted_ca_files", [])
    if not all(path.startswith("/") for path in cas):
        raise ConfigError("trusted_ca_files: must be a list of absolute paths")
    root.done()
    return Config(
        listen,
        tuple(certificates),
        float(poll),
        file_cert_dir.rstrip("/") if file_cert_dir else None,
        log_level,
        tuple(Path(p) for p in cas),
    )


def _pem(section: Section, key: str, marker: str) -> PemSource:
    """`key` (PEM text holding `marker`) or `key`_file (the path of a file that exists): exactly one."""
    file_key = f"{key}_file"
    inline_given, file_given = (section.get(name, default=None) is not None for name in (key, file_key))
    if inline_given == file_given:
        raise ConfigError(f"{section.key(key)}: give exactly one of {key} (PEM) or {file_key} (a path)")
    if inline_given:
        inline = section.string(key)
        if "-----BEGIN" not in inline or marker not in inline:
            raise ConfigError(f"{section.key(key)}: is not a PEM {marker.strip('-').strip().lower()}")
        return PemSource(inline=inline)
    return PemSource(path=section.file(file_key))
