"""A default has one meaning: Copilot's config file with a key left out behaves as the copilot job does
with that property left at its spec default. The job renders every value explicitly, so without this test
the code's defaults (used by anyone running `copilot --config` by hand) could drift from the spec's."""

from __future__ import annotations

import dataclasses

import yaml
from release_helpers import copilot_properties, render

from copilot.config import load as load_copilot_config
from copilot.config import parse as parse_copilot_config


def _without_paths(config) -> dict:
    """The config as a dict, with file paths (which differ by construction) left out."""
    def strip(value):
        if dataclasses.is_dataclass(value):
            return {f.name: strip(getattr(value, f.name)) for f in dataclasses.fields(value) if not _is_path(f.name)}
        if isinstance(value, tuple | list):
            return [strip(v) for v in value]
        return value

    return strip(config)


def _is_path(name: str) -> bool:
    return name in {"ca_cert", "client_cert", "client_key", "cert", "key", "client_ca"}


def test_copilot_code_defaults_are_the_spec_defaults(pki, tmp_path) -> None:
    tls = {"server_cert": pki.server.cert, "server_key": pki.server.key, "client_ca_cert": pki.ca}
    routing_api = {"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key,
                   "uaa": {"issuer": "https://uaa.example.com/oauth/token", "verification_keys": [pki.ca]}}
    properties = copilot_properties(pki, cc={"enabled": True, **tls}, registrar={"enabled": True, **tls}, routing_api=routing_api)
    properties["service_discovery"] = {"enabled": True, **tls}
    rendered = render("copilot", properties, tmp_path)
    text = rendered["config/copilot.yml"].read_text().replace("/var/vcap/jobs/copilot", str(tmp_path))
    rendered["config/copilot.yml"].write_text(text)
    from_job = load_copilot_config(rendered["config/copilot.yml"])

    files = yaml.safe_load(text)
    minimal = {
        "bbs": {key: files["bbs"][key] for key in ("url", "ca_cert", "client_cert", "client_key")},
        "cc": {key: files["cc"][key] for key in ("cert", "key", "client_ca")},
        "registrar": {key: files["registrar"][key] for key in ("cert", "key", "client_ca")},
        "service_discovery": {key: files["service_discovery"][key] for key in ("cert", "key", "client_ca")},
        "routing_api": {key: files["routing_api"][key] for key in ("cert", "key", "uaa_issuer", "uaa_verification_keys")},
    }
    from_code = parse_copilot_config(minimal)
    assert _without_paths(from_code) == _without_paths(from_job)


def test_router_sds_code_defaults_are_the_spec_defaults(pki, tmp_path) -> None:
    from release_helpers import pilot_link

    from router_sds.config import load as load_sds_config
    from router_sds.config import parse as parse_sds_config

    pilot_tls = {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key}
    rendered = render("istio-router", {"pilot_tls": pilot_tls}, tmp_path,
                      links={"pilot": pilot_link({"tls": {"cert": pki.server.cert}})})
    from_job = load_sds_config(rendered["config/sds.yml"])
    from_code = parse_sds_config({"listen": from_job.listen, "file_cert_dir": from_job.file_cert_dir})
    assert from_code == from_job
