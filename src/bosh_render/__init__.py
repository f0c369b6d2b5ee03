"""Renders BOSH job templates the way a BOSH director does, without a director.

The job's `spec` gives the templates (source -> destination), the declared properties with their
defaults and the links it consumes and provides. Properties are resolved like the director does
(given value, else spec default; undeclared properties are not visible to templates) and the ERB
templates are evaluated by Ruby (render.rb, shipped beside this file) with BOSH's template helpers:
p / if_p, spec.*, link / if_link.

    rendered = render_job(Path("jobs/copilot"), {"bbs": {...}}, out_dir=tmp)
    rendered["config/copilot.yml"]  # -> tmp/config/copilot.yml
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RenderError", "default_spec", "link_from_job", "load_job_spec", "render_job", "resolve_properties"]

RENDER_RB = Path(__file__).with_name("render.rb")
_MISSING = object()


class RenderError(RuntimeError):
    """A template could not be rendered; the message names the template and the cause (e.g. a property)."""


def load_job_spec(job_dir: Path) -> dict:
    spec_path = Path(job_dir) / "spec"
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except OSError as error:
        raise RenderError(f"cannot read job spec {spec_path}: {error.strerror}") from None
    if not isinstance(spec, dict) or "name" not in spec:
        raise RenderError(f"{spec_path}: not a job spec (a mapping with a name)")
    return spec


def _lookup(tree: Any, name: str) -> Any:
    node = tree
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _assign(tree: dict, name: str, value: Any) -> None:
    parts = name.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def resolve_properties(declared: dict | None, given: dict | None) -> dict:
    """The property tree a director hands to templates: every declared property, given value or default."""
    resolved: dict = {}
    for name, declaration in (declared or {}).items():
        value = _lookup(given or {}, name)
        if value is _MISSING or value is None:
            has_default = isinstance(declaration, dict) and "default" in declaration
            value = copy.deepcopy(declaration["default"]) if has_default else None
        _assign(resolved, name, value)
    return resolved


def default_spec(job_name: str) -> dict:
    """The instance `spec` a director would give: one instance, index 0, on a private IP."""
    return {
        "deployment": "cf",
        "name": job_name,
        "index": 0,
        "id": "4a1e8d6c-0000-4000-8000-000000000000",
        "az": "z1",
        "ip": "10.0.16.10",
        "address": "10.0.16.10",
        "bootstrap": True,
        "job": {"name": job_name},
        "networks": {"default": {"ip": "10.0.16.10", "default": ["dns", "gateway"]}},
    }


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested dicts merged key by key (as BOSH merges properties)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _normalise_link(name: str, link: dict) -> dict:
    instances = []
    for index, instance in enumerate(link.get("instances") or []):
        if "address" not in instance:
            raise RenderError(f"link '{name}': instance {index} has no address")
        instances.append({
            "name": instance.get("name", name),
            "index": instance.get("index", index),
            "id": instance.get("id", f"{name}-{index}"),
            "az": instance.get("az", "z1"),
            "address": instance["address"],
            "bootstrap": instance.get("bootstrap", index == 0),
        })
    address = link.get("address") or (instances[0]["address"] if instances else None)
    return {"properties": link.get("properties") or {}, "instances": instances, "address": address}


def link_from_job(provider_dir: Path, link_name: str, properties: dict | None = None, *,
                  instances: list[dict] | None = None, address: str | None = None) -> dict:
    """The link a provider job publishes: the properties its spec lists for the link, defaults applied."""
    spec = load_job_spec(provider_dir)
    for provided in spec.get("provides") or []:
        if provided.get("name") == link_name:
            names = provided.get("properties") or []
            break
    else:
        raise RenderError(f"job {spec['name']} does not provide a link named '{link_name}'")
    resolved = resolve_properties(spec.get("properties"), properties)
    link_properties: dict = {}
    for name in names:
        value = _lookup(resolved, name)
        _assign(link_properties, name, None if value is _MISSING else value)
    link = {"properties": link_properties, "instances": instances or [{"address": "10.0.16.20"}]}
    if address:
        link["address"] = address
    return link


def render_job(job_dir: Path, properties: dict | None, *, spec_overrides: dict | None = None,
               links: dict | None = None, out_dir: Path) -> dict[str, Path]:
    """Render every template of the job into out_dir; returns {destination (as in the spec): path}."""
    job_dir = Path(job_dir)
    out_dir = Path(out_dir)
    spec = load_job_spec(job_dir)
    links = links or {}
    consumed = {c["name"]: c for c in spec.get("consumes") or []}
    for name in links:
        if name not in consumed:
            raise RenderError(f"job {spec['name']} does not consume a link named '{name}'")
    for name, consumer in consumed.items():
        if name not in links and not consumer.get("optional", False):
            raise RenderError(f"job {spec['name']} consumes link '{name}' (type {consumer.get('type')}) but none was given")
    templates = spec.get("templates") or {}
    plan = []
    rendered: dict[str, Path] = {}
    for source, destination in templates.items():
        source_path = job_dir / "templates" / source
        if not source_path.is_file():
            raise RenderError(f"job {spec['name']}: template {source} listed in the spec does not exist")
        target = out_dir / destination
        plan.append({"source": str(source_path), "destination": str(target), "name": f"{spec['name']}/templates/{source}"})
        rendered[destination] = target
    context = {
        "templates": plan,
        "properties": resolve_properties(spec.get("properties"), properties),
        "spec": deep_merge(default_spec(spec["name"]), spec_overrides or {}),
        "links": {name: _normalise_link(name, link) for name, link in links.items()},
    }
    ruby = shutil.which("ruby")
    if ruby is None:
        raise RenderError("ruby not found: BOSH templates are ERB and need Ruby (apt-get install ruby)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(context, handle)
        context_path = Path(handle.name)
    try:
        result = subprocess.run([ruby, str(RENDER_RB), str(context_path)], capture_output=True, text=True, timeout=60)
    finally:
        context_path.unlink(missing_ok=True)
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("error: ") or f"ruby exited with {result.returncode}"
        raise RenderError(message)
    for destination, path in rendered.items():
        if destination.startswith("bin/"):  # BOSH makes a job's bin/ files executable
            path.chmod(0o755)
    return rendered
