"""python -m bosh_render JOB_DIR [--properties F] [--links F] [--spec F] --out DIR"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from bosh_render import RenderError, render_job


def _load_yaml(path: str | None, what: str) -> dict:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RenderError(f"cannot read {what} file {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RenderError(f"{what} file {path}: must be a mapping")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bosh_render", description="Render a BOSH job's templates like a director.")
    parser.add_argument("job_dir", help="the job directory (holds spec and templates/)")
    parser.add_argument("--properties", help="YAML mapping of the job's properties (nested, as in a manifest)")
    parser.add_argument("--links", help="YAML mapping: link name -> {properties, instances: [{address, ...}], address}")
    parser.add_argument("--spec", help="YAML mapping overriding the instance spec (ip, name, index, az, ...)")
    parser.add_argument("--out", required=True, help="directory to write the rendered files into")
    args = parser.parse_args(argv)
    try:
        rendered = render_job(
            Path(args.job_dir),
            _load_yaml(args.properties, "properties"),
            links=_load_yaml(args.links, "links"),
            spec_overrides=_load_yaml(args.spec, "spec"),
            out_dir=Path(args.out),
        )
    except RenderError as error:
        print(f"bosh_render: {error}", file=sys.stderr)
        return 1
    for destination, path in rendered.items():
        print(f"{destination} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
