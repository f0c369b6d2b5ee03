"""`python -m local_tier start|status|logs|stop`: the routing tier on this machine (see scripts/run-local)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from devtools import peers
from local_tier import apps, launch, render, supervisor
from local_tier.launch import ports, running
from local_tier.layout import Layout


def start(layout: Layout, overrides: dict[str, str]) -> int:
    if running(layout):
        print("The local tier is already running (./scripts/run-local status); stop it first to restart.")
        return 0
    try:
        tools = {"bosh": peers.bosh(), "envoy": peers.envoy(), "pilot-discovery": peers.pilot_discovery()}
    except peers.MissingPeer as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, path in tools.items():
        print(f"  {name:16} {path}")
    layout.root.mkdir(parents=True, exist_ok=True)
    (layout.root / "ports.yml").write_text(yaml.safe_dump(overrides))
    wanted = ports(layout)
    taken = [f"{name}={port}" for name, port in wanted.items() if launch.listening(port)]
    if taken:
        print(
            f"error: ports already in use: {', '.join(taken)}. Free them, or move them: ./scripts/run-local start -v NAME=PORT",
            file=sys.stderr,
        )
        return 1

    step("rendering manifests/local.yml with the release's jobs (certificates from bosh int --vars-store)")
    try:
        processes = launch.prepare(layout, wanted)
    except (RuntimeError, ValueError) as error:  # bosh int and template errors name what is wrong
        print(f"error: {error}", file=sys.stderr)
        return 1
    pki = _bbs_certificates(layout)
    bbs_double = [
        sys.executable,
        "-m",
        "bbs_double",
        "--ca-cert",
        str(pki / "ca.crt"),
        "--cert",
        str(pki / "server.crt"),
        "--key",
        str(pki / "server.key"),
        "--port",
        str(wanted["bbs_port"]),
        "--admin-port",
        str(wanted["bbs_admin_port"]),
    ]
    os.environ["PYTHONPATH"] = str(peers.REPO / "src")
    print(f"  jobs rendered into {layout.jobs}: {', '.join(sorted({p.job for p in processes}))}")

    cell = [sys.executable, "-m", "local_tier.cell_service", "--root", str(layout.root), "--port", str(wanted["cell_admin_port"])]
    step("starting the stand-ins (BBS double, a v58 Diego cell) and the jobs' processes under supervisor")
    try:
        names = launch.start(layout, processes, {"bbs-double": bbs_double, "cell": cell})
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  {', '.join(names)}")
    cell_ready = ("the cell", lambda: launch.listening(wanted["cell_admin_port"]))
    if not launch.wait_ready(layout, wanted, first=[cell_ready]):
        print("error: the tier did not come up; last log lines:", file=sys.stderr)
        print(tails(layout, 15), file=sys.stderr)
        stop(layout, quiet=True)
        return 1
    print(f"""
The routing tier is up. It listens on loopback only:
  router (Envoy) HTTP     http://127.0.0.1:{wanted["router_http_port"]}   (Gateway port from Copilot)
  router (Envoy) HTTPS    https://127.0.0.1:{wanted["router_https_port"]}  (*.apps.local, CA in {layout.pki / "router_ca.crt"})
  router health           http://127.0.0.1:{wanted["router_health_port"]}/health
  router admin            http://127.0.0.1:{wanted["router_admin_port"]}
  istiod xDS              127.0.0.1:{wanted["istiod_grpc_port"]} (plaintext, loopback only)
  istiod xDS for routers  127.0.0.1:{wanted["istiod_secure_grpc_port"]} (mutual TLS)
  Copilot MCP             127.0.0.1:{wanted["copilot_mcp_port"]}
  Copilot CC API (mTLS)   127.0.0.1:{wanted["copilot_cc_port"]}
  Copilot registrar (mTLS) 127.0.0.1:{wanted["copilot_registrar_port"]}
  Copilot apps.internal   https://127.0.0.1:{wanted["copilot_service_discovery_port"]}  (mTLS, bosh-dns-adapter's API)
  Copilot router groups   https://127.0.0.1:{wanted["copilot_routing_api_port"]}  (at api.sys.local/routing)
  router TCP (default-tcp) 127.0.0.1:{wanted["router_tcp_port"]}  (the local router group's one reservable port)
  Copilot health/metrics  http://127.0.0.1:{wanted["copilot_health_port"]}/health  /metrics
  BBS double (mTLS)       https://127.0.0.1:{wanted["bbs_port"]}   (control API http://127.0.0.1:{wanted["bbs_admin_port"]})
  Diego cell double       apps on 127.1.x.y behind their TLS proxies (control API http://127.0.0.1:{wanted["cell_admin_port"]})
Files: jobs in {layout.jobs}, logs in {layout.logs}

Push an app:  ./scripts/cf-local push myapp -i 2
Then:         ./scripts/run-local status | logs [NAME] | stop""")
    return 0


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _bbs_certificates(layout: Layout) -> Path:
    variables = render.variables(layout)
    layout.pki.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.crt": variables["diego_ca"]["certificate"],
        "server.crt": variables["bbs_server"]["certificate"],
        "server.key": variables["bbs_server"]["private_key"],
        "router_ca.crt": variables["router_ca"]["certificate"],
    }
    for name, content in files.items():
        (layout.pki / name).write_text(content)
    (layout.pki / "server.key").chmod(0o600)
    return layout.pki


def smoke_test(layout: Layout) -> int:
    """Runs the istio-smoke-tests errand's own script, rendered from the release, against this tier."""
    if not running(layout):
        print("error: the local tier is not running; start it with ./scripts/run-local", file=sys.stderr)
        return 1
    manifest = yaml.safe_load(layout.manifest.read_text())
    run = render.render_errand(layout, manifest)
    render.lay_out_packages(layout)
    step(f"running the istio-smoke-tests errand ({run}) with a local cf stand-in")
    env = {**os.environ, "BOSH_PACKAGES_DIR": str(layout.packages), "PYTHONPATH": str(peers.REPO / "src")}
    return subprocess.run([str(run)], env=env).returncode


def status(layout: Layout) -> int:
    if not running(layout):
        print("The local tier is not running (./scripts/run-local to start it).")
        return 3
    print(supervisor.ctl(layout, "status").stdout.rstrip())
    try:
        health = requests.get(f"http://127.0.0.1:{ports(layout)['copilot_health_port']}/health", timeout=1).json()
        print(f"copilot: {health}")
    except (requests.RequestException, ValueError) as error:
        print(f"copilot health unavailable: {error}")
    for name, app in apps.load(layout).items():
        print(f"app {name}: {len(app['instances'])} instance(s), routes {', '.join(app['routes'])}")
    return 0


def tails(layout: Layout, lines: int, only: str | None = None) -> str:
    out = []
    for log in sorted(layout.logs.rglob("*.log")):
        if only and only not in str(log.relative_to(layout.logs)):
            continue
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.relative_to(layout.root)}\n" + "\n".join(text))
    return "\n".join(out)


def stop(layout: Layout, quiet: bool = False) -> int:
    apps.forget_all(layout)
    if running(layout):
        launch.shutdown(layout)
    left = [f"{name}={port}" for name, port in ports(layout).items() if launch.listening(port)] if layout.root.exists() else []
    if left:
        print(f"warning: still listening after stop: {', '.join(left)}", file=sys.stderr)
        return 1
    if not quiet:
        print("The local tier is stopped; nothing it started is listening.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run-local", description="Run the Istio routing tier on this machine.")
    sub = parser.add_subparsers(dest="command")
    start_parser = sub.add_parser("start", help="render the jobs and start the tier (the default)")
    start_parser.add_argument(
        "-v",
        dest="vars",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="move a port (names in manifests/local-ports.yml)",
    )
    sub.add_parser("status", help="what runs, and Copilot's health")
    logs = sub.add_parser("logs", help="the last lines of every log (or those matching NAME)")
    logs.add_argument("name", nargs="?")
    logs.add_argument("-n", type=int, default=40)
    sub.add_parser("stop", help="stop everything the tier and the push command started")
    sub.add_parser("smoke-test", help="run the istio-smoke-tests errand's script against the running tier")
    args = parser.parse_args(argv)
    layout = Layout.default()
    command = args.command or "start"
    if command == "start":
        overrides = dict(v.split("=", 1) for v in getattr(args, "vars", []))
        return start(layout, overrides)
    if command == "status":
        return status(layout)
    if command == "smoke-test":
        return smoke_test(layout)
    if command == "logs":
        print(tails(layout, args.n, args.name))
        return 0
    return stop(layout)


if __name__ == "__main__":
    sys.exit(main())
