"""pilot-discovery's access_log.* properties: the routers' access log (istiod mesh config). The format's one
home is the spec default, which the e2e tier renders (tests/e2e/test_router_parity.py reads the lines)."""

from __future__ import annotations

import pytest
import yaml
from release_helpers import copilot_link, load_spec, render

from bosh_render import RenderError


def mesh_of(properties: dict, out) -> dict:
    rendered = render("pilot-discovery", properties, out, links={"copilot": copilot_link()})
    return yaml.safe_load(rendered["config/mesh.yml"].read_text())


ACCESS_LOG_FORMAT = load_spec("job", "pilot-discovery")["properties"]["access_log.format"]["default"]


def test_no_access_log_unless_a_file_is_given(tmp_path):
    mesh = mesh_of({}, tmp_path)
    assert not any(key.startswith("accessLog") for key in mesh)


def test_access_log_to_stdout_with_extra_headers(tmp_path):
    mesh = mesh_of({"access_log": {"file": "/dev/stdout", "extra_headers": ["X-B3-TraceId", "Referer"]}}, tmp_path)
    assert mesh["accessLogFile"] == "/dev/stdout"
    assert mesh["accessLogEncoding"] == "TEXT"
    assert mesh["accessLogFormat"] == (
        ACCESS_LOG_FORMAT.rstrip("\n") + ' x-b3-traceid:"%REQ(X-B3-TraceId)%" referer:"%REQ(Referer)%"\n'
    )


def test_extra_headers_must_be_header_names(tmp_path):
    with pytest.raises(RenderError, match="access_log.extra_headers"):
        mesh_of({"access_log": {"file": "/dev/stdout", "extra_headers": ['bad" header']}}, tmp_path)
