"""bosh_render: BOSH template semantics (p, if_p, spec, links) on a small throwaway job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bosh_render import RenderError, link_from_job, render_job
from devtools.peers import REPO

SPEC = {
    "name": "demo",
    "templates": {"out.txt.erb": "config/out.txt", "run.erb": "bin/run"},
    "consumes": [{"name": "backend", "type": "backend"}, {"name": "extra", "type": "extra", "optional": True}],
    "provides": [{"name": "demo", "type": "demo", "properties": ["port", "nested.value"]}],
    "properties": {
        "port": {"description": "a port", "default": 8080},
        "name": {"description": "required, no default"},
        "nested.value": {"description": "nested", "default": "deep"},
        "nested.map": {"description": "a map", "default": {"a": "b"}},
        "flag": {"description": "a boolean", "default": False},
        "optional": {"description": "optional, no default"},
    },
}


def make_job(tmp_path: Path, out_template: str, spec: dict | None = None) -> Path:
    job = tmp_path / "job"
    (job / "templates").mkdir(parents=True)
    (job / "spec").write_text(yaml.safe_dump(spec or SPEC))
    (job / "templates" / "out.txt.erb").write_text(out_template)
    (job / "templates" / "run.erb").write_text("#!/bin/sh\necho <%= p('port') %>\n")
    return job


def render_text(tmp_path: Path, template: str, properties: dict | None = None, **kwargs) -> str:
    job = make_job(tmp_path, template)
    links = kwargs.pop("links", {"backend": {"instances": [{"address": "10.0.0.5"}]}})
    rendered = render_job(job, {"name": "x", **(properties or {})}, links=links, out_dir=tmp_path / "out", **kwargs)
    return rendered["config/out.txt"].read_text()


def test_returns_destinations_from_the_spec_and_makes_bin_executable(tmp_path):
    job = make_job(tmp_path, "hi")
    rendered = render_job(job, {"name": "x"}, links={"backend": {"instances": []}}, out_dir=tmp_path / "out")
    assert set(rendered) == {"config/out.txt", "bin/run"}
    assert rendered["bin/run"] == tmp_path / "out" / "bin" / "run"
    assert rendered["bin/run"].read_text() == "#!/bin/sh\necho 8080\n"
    assert rendered["bin/run"].stat().st_mode & 0o111


def test_p_gives_value_default_and_nested_paths(tmp_path):
    text = render_text(tmp_path, "<%= p('port') %> <%= p('nested.value') %> <%= p('nested.map')['a'] %> <%= p('name') %>",
                       {"nested": {"value": "given"}})
    assert text == "8080 given b x"


def test_p_second_argument_is_the_default_for_properties_without_one(tmp_path):
    assert render_text(tmp_path, "<%= p('optional', 'fallback') %>|<%= p('flag') %>") == "fallback|false"


def test_p_takes_the_first_present_of_several_names(tmp_path):
    assert render_text(tmp_path, "<%= p(['optional', 'port']) %>") == "8080"


def test_missing_required_property_names_it(tmp_path):
    job = make_job(tmp_path, "<%= p('name') %>")
    with pytest.raises(RenderError, match=r"demo/templates/out.txt.erb: Can't find property 'name'"):
        render_job(job, {}, links={"backend": {"instances": []}}, out_dir=tmp_path / "out")


def test_undeclared_properties_are_invisible_like_on_a_director(tmp_path):
    with pytest.raises(RenderError, match="Can't find property 'undeclared'"):
        render_text(tmp_path, "<%= p('undeclared') %>", {"undeclared": "given but not in the spec"})


def test_if_p_yields_only_when_every_property_is_set_and_else_runs_otherwise(tmp_path):
    template = (
        "<% if_p('optional', 'port') do |o, p| %>both <%= o %> <%= p %><% end.else do %>not all<% end %>"
        "|<% if_p('optional') do |o| %>opt<% end.else_if_p('port') do |p| %>port <%= p %><% end %>"
    )
    assert render_text(tmp_path, template) == "not all|port 8080"
    assert render_text(tmp_path / "2", template, {"optional": "o"}) == "both o 8080|opt"


def test_spec_has_instance_fields_and_overrides(tmp_path):
    template = "<%= spec.ip %> <%= spec.name %> <%= spec.index %> <%= spec.az %> <%= spec.job.name %> <%= spec.deployment %> " \
               "<%= spec.bootstrap %> <%= spec.id %> <%= spec.address %> <%= name %> <%= index %>"
    text = render_text(tmp_path, template, spec_overrides={"ip": "10.1.2.3", "name": "ig", "index": 2, "az": "z3"})
    parts = text.split()
    assert parts[:6] == ["10.1.2.3", "ig", "2", "z3", "demo", "cf"]
    assert parts[6] == "true" and parts[7] and parts[9:] == ["demo", "2"]


def test_link_address_instances_and_properties(tmp_path):
    template = (
        "<% l = link('backend') %><%= l.address %>|<%= l.instances.map(&:address).join(',') %>|"
        "<%= l.instances.map(&:index).join(',') %>|<%= l.instances[1].az %>|<%= l.instances[0].bootstrap %>|"
        "<%= l.p('port') %>|<%= l.p('missing', 'dflt') %>|<% l.if_p('port') do |p| %>has <%= p %><% end %>"
    )
    links = {"backend": {"properties": {"port": 99}, "instances": [{"address": "10.0.0.5"}, {"address": "10.0.0.6", "az": "z2"}]}}
    assert render_text(tmp_path, template, links=links) == "10.0.0.5|10.0.0.5,10.0.0.6|0,1|z2|true|99|dflt|has 99"


def test_link_property_missing_names_property_and_link(tmp_path):
    with pytest.raises(RenderError, match="Can't find property 'nope' in link 'backend'"):
        render_text(tmp_path, "<%= link('backend').p('nope') %>")


def test_if_link_and_missing_links(tmp_path):
    template = "<% if_link('extra') do |e| %>extra <%= e.address %><% end.else do %>no extra<% end %>"
    assert render_text(tmp_path, template) == "no extra"
    links = {"backend": {"instances": []}, "extra": {"instances": [{"address": "e.example"}]}}
    assert render_text(tmp_path / "2", template, links=links) == "extra e.example"
    with pytest.raises(RenderError, match="Can't find link 'extra'"):
        render_text(tmp_path / "3", "<%= link('extra').address %>")


def test_required_link_must_be_given_and_unknown_links_are_refused(tmp_path):
    job = make_job(tmp_path, "x")
    with pytest.raises(RenderError, match="consumes link 'backend'"):
        render_job(job, {"name": "x"}, out_dir=tmp_path / "out")
    with pytest.raises(RenderError, match="does not consume a link named 'other'"):
        render_job(job, {"name": "x"}, links={"backend": {}, "other": {}}, out_dir=tmp_path / "out")


def test_template_errors_name_the_template(tmp_path):
    job = make_job(tmp_path, "<% raise 'port: must be even' %>")
    with pytest.raises(RenderError, match=r"^demo/templates/out.txt.erb: port: must be even$"):
        render_job(job, {"name": "x"}, links={"backend": {}}, out_dir=tmp_path / "out")
    job = make_job(tmp_path / "2", "<%= nosuchmethod %>")
    with pytest.raises(RenderError, match="out.txt.erb: NameError"):
        render_job(job, {"name": "x"}, links={"backend": {}}, out_dir=tmp_path / "out")


def test_link_from_job_publishes_the_declared_properties_with_defaults(tmp_path):
    job = make_job(tmp_path, "x")
    link = link_from_job(job, "demo", {"port": 1}, instances=[{"address": "a"}])
    assert link == {"properties": {"port": 1, "nested": {"value": "deep"}}, "instances": [{"address": "a"}]}
    with pytest.raises(RenderError, match="does not provide a link named 'nope'"):
        link_from_job(job, "nope")


def test_cli_renders_and_reports_errors(tmp_path):
    job = make_job(tmp_path, "<%= p('name') %> <%= link('backend').instances.size %> <%= spec.ip %>")
    props, links, spec = tmp_path / "p.yml", tmp_path / "l.yml", tmp_path / "s.yml"
    props.write_text("name: cli\n")
    links.write_text("backend:\n  instances:\n  - address: 10.0.0.1\n")
    spec.write_text("ip: 192.0.2.1\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    ok = subprocess.run([sys.executable, "-m", "bosh_render", str(job), "--properties", str(props), "--links", str(links),
                         "--spec", str(spec), "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "config/out.txt ->" in ok.stdout
    assert (tmp_path / "out" / "config" / "out.txt").read_text() == "cli 1 192.0.2.1"
    props.write_text("{}\n")
    bad = subprocess.run([sys.executable, "-m", "bosh_render", str(job), "--properties", str(props), "--links", str(links),
                          "--out", str(tmp_path / "out2")], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "Can't find property 'name'" in bad.stderr
