"""A `cf` command for the local tier: the subset of the cf CLI the istio-smoke-tests errand uses, mapped
onto cf-local, so the errand's script runs unchanged against ./scripts/run-local.

There is no Cloud Controller here: api, auth, target and create-space succeed without effect; push,
map-route and delete-org act on the local tier's apps (the org is remembered in $CF_HOME).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from local_tier import cf

USAGE = "cf (local stand-in): version | api | auth | target | create-org | create-space | push | map-route | delete-org"


def _org_file() -> Path:
    return Path(os.environ.get("CF_HOME", Path.home())) / ".cf-local-org"


def _option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 64
    command, rest = args[0], args[1:]
    if command in ("version", "--version", "-v"):
        print("cf version 8 (local stand-in for the local routing tier)")
        return 0
    if command in ("api", "auth", "create-space"):
        print(f"OK ({command}: no Cloud Controller on the local tier)")
        return 0
    if command == "target":
        org = _option(rest, "-o")
        if org:
            _org_file().write_text(org)
        print("OK")
        return 0
    if command == "create-org":
        _org_file().write_text(rest[0])
        print(f"OK (org {rest[0]})")
        return 0
    if command == "push":
        org = _org_file().read_text() if _org_file().is_file() else ""
        push = ["push", rest[0], "--org", org]
        path = _option(rest, "-p")
        if path:
            push += ["--static-dir", path]
        if "--no-route" in rest:
            push.append("--no-route")
        return cf.main(push)
    if command == "map-route":
        app, domain = rest[0], rest[1]
        hostname = _option(rest, "--hostname", "-n") or app
        return cf.main(["map-route", app, "--domain", domain, "--hostname", hostname])
    if command == "delete-org":
        org = rest[0]
        state = cf.apps.load(cf.Layout.default())
        for name, app in list(state.items()):
            if app.get("org") == org:
                cf.main(["stop", name])
        print(f"OK (org {org} deleted)")
        return 0
    print(f"cf (local stand-in): '{command}' is not supported. {USAGE}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
