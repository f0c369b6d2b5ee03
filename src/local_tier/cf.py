"""`python -m local_tier.cf` (scripts/cf-local): stands in for `cf push` and friends against the local tier.
It starts sample app instances on the local tier's cell (each behind a v58 TLS proxy), tells the BBS
double about them as Diego would (desired LRP with routes, instances RUNNING), and sets weights through
Copilot's Cloud Controller API as Cloud Controller would."""

from __future__ import annotations

import argparse
import hashlib
import sys

import requests

from copilot.protos import cc_copilot_pb2 as api
from copilot.protos import cc_copilot_pb2_grpc as api_grpc
from local_tier import apps, launch
from local_tier.launch import ports, running
from local_tier.layout import Layout

DEFAULT_DOMAIN = "apps.local"


class Local:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.ports = ports(layout)
        self.admin = f"http://127.0.0.1:{self.ports['bbs_admin_port']}"
        self.state = apps.load(layout)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        response = requests.request(method, self.admin + path, json=body or {}, timeout=10)
        if response.status_code != 200:
            raise SystemExit(f"error: BBS double {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def save(self) -> None:
        apps.save(self.layout, self.state)

    def desire(self, name: str) -> None:
        app = self.state[name]
        routes = [{"hostnames": app["routes"], "port": 8080}] if app["routes"] else []
        self.call(
            "POST", "/desired_lrps", {"process_guid": app["process_guid"], "http_routes": routes, "instances": app["desired"]}
        )

    def start(self, name: str, index: int) -> None:
        """As Diego would: the cell starts the instance behind its TLS proxy, then BBS reports it RUNNING
        with the net info the rep reports (v58: only the TLS proxy port is mapped)."""
        app = self.state[name]
        guid = f"{app['process_guid']}-{index}-{hashlib.sha256(str(len(app['instances'])).encode()).hexdigest()[:6]}"
        net_info = apps.start_on_cell(self.layout, guid, app.get("static_dir"))
        self.call("POST", "/instances", {"process_guid": app["process_guid"], "index": index, **net_info})
        app["instances"].append({"index": index, "guid": guid, "port": net_info["host_tls_proxy_port"]})

    def stop_instance(self, name: str, instance: dict) -> None:
        app = self.state[name]
        self.call("POST", "/instances/remove", {"process_guid": app["process_guid"], "index": instance["index"]})
        apps.stop_on_cell(self.layout, instance["guid"])
        app["instances"].remove(instance)

    def curl(self, route: str) -> str:
        host, _, path = route.partition("/")
        return f"curl -H 'Host: {host}' http://127.0.0.1:{self.ports['router_http_port']}/{path}"


def route_of(args: argparse.Namespace, name: str) -> str:
    host = (args.hostname or name) + "." + args.domain
    return host + (("/" + args.path.strip("/")) if args.path else "")


def push(local: Local, args: argparse.Namespace) -> None:
    name = args.name
    if name in local.state:
        raise SystemExit(f"error: {name} is already pushed; use scale, or stop it first")
    route = route_of(args, name)
    local.state[name] = {
        "process_guid": f"{name}-v1",
        "routes": [] if args.no_route else [route],
        "desired": args.instances,
        "instances": [],
        "static_dir": args.static_dir,
        "org": args.org,
    }
    local.desire(name)
    for index in range(args.instances):
        local.start(name, index)
    local.save()
    if args.no_route:
        print(f"{name}: {args.instances} instance(s) RUNNING, no route")
        return
    print(f"{name}: {args.instances} instance(s) RUNNING, route {route}")
    print(local.curl(route))


def scale(local: Local, args: argparse.Namespace) -> None:
    app = _app(local, args.name)
    app["desired"] = args.instances
    local.desire(args.name)
    running_indexes = {i["index"] for i in app["instances"]}
    for index in range(args.instances):
        if index not in running_indexes:
            local.start(args.name, index)
    for instance in [i for i in app["instances"] if i["index"] >= args.instances]:
        local.stop_instance(args.name, instance)
    local.save()
    print(f"{args.name}: {len(app['instances'])} instance(s) RUNNING")


def stop(local: Local, args: argparse.Namespace) -> None:
    app = _app(local, args.name)
    for instance in list(app["instances"]):
        local.stop_instance(args.name, instance)
    local.call("DELETE", f"/desired_lrps/{app['process_guid']}")
    del local.state[args.name]
    local.save()
    print(f"{args.name}: stopped and deleted")


def map_route(local: Local, args: argparse.Namespace, add: bool) -> None:
    app = _app(local, args.name)
    route = route_of(args, args.name)
    if add and route not in app["routes"]:
        app["routes"].append(route)
    elif not add and route in app["routes"]:
        app["routes"].remove(route)
    local.desire(args.name)
    local.save()
    print(f"{args.name}: routes {', '.join(app['routes']) or '(none)'}")
    if add:
        print(local.curl(route))


def set_weights(local: Local, args: argparse.Namespace) -> None:
    """Maps the route to each named app with a weight, through Copilot's Cloud Controller API."""
    host, _, path = args.route.partition("/")
    with launch.cc_channel(local.layout, local.ports) as channel:
        stub = api_grpc.CloudControllerCopilotStub(channel)
        route_guid = "route-" + hashlib.sha256(args.route.encode()).hexdigest()[:12]
        stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=route_guid, host=host, path="/" + path if path else "")))
        for pair in args.weights:
            name, _, weight = pair.partition("=")
            app = _app(local, name)
            association = api.CapiDiegoProcessAssociation(capi_process_guid=name, diego_process_guids=[app["process_guid"]])
            stub.UpsertCapiDiegoProcessAssociation(
                api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
            )
            mapping = api.RouteMapping(capi_process_guid=name, route_guid=route_guid, route_weight=int(weight))
            stub.MapRoute(api.MapRouteRequest(route_mapping=mapping))
    print(f"{args.route}: weights {' '.join(args.weights)}")
    print(local.curl(args.route))


def _app(local: Local, name: str) -> dict:
    if name not in local.state:
        raise SystemExit(f"error: no app named {name} (./scripts/cf-local apps)")
    return local.state[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cf-local", description="cf push and friends, against the local tier.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_route(p: argparse.ArgumentParser) -> None:
        p.add_argument("--hostname", help="host name (default: the app name)")
        p.add_argument("--domain", default=DEFAULT_DOMAIN)
        p.add_argument("--path", default="", help="context path, e.g. /api")

    p = sub.add_parser("push", help="start N instances of the sample app with a route")
    p.add_argument("name")
    p.add_argument("-i", "--instances", type=int, default=1)
    p.add_argument("--no-route", action="store_true", help="push without mapping a route")
    p.add_argument("--static-dir", help="serve this directory's index.html (default: answer with the instance guid)")
    p.add_argument("--org", default="", help=argparse.SUPPRESS)
    with_route(p)
    p = sub.add_parser("scale")
    p.add_argument("name")
    p.add_argument("-i", "--instances", type=int, required=True)
    sub.add_parser("stop", help="stop and delete an app").add_argument("name")
    for command in ("map-route", "unmap-route"):
        p = sub.add_parser(command)
        p.add_argument("name")
        with_route(p)
    p = sub.add_parser("set-weights", help="weighted routing via the CC API: set-weights HOST[/PATH] APP=W APP=W")
    p.add_argument("route")
    p.add_argument("weights", nargs="+")
    sub.add_parser("apps", help="list pushed apps")
    args = parser.parse_args(argv)

    layout = Layout.default()
    if not running(layout):
        print("error: the local tier is not running; start it with ./scripts/run-local", file=sys.stderr)
        return 1
    local = Local(layout)
    if args.command == "push":
        push(local, args)
    elif args.command == "scale":
        scale(local, args)
    elif args.command == "stop":
        stop(local, args)
    elif args.command in ("map-route", "unmap-route"):
        map_route(local, args, add=args.command == "map-route")
    elif args.command == "set-weights":
        set_weights(local, args)
    else:
        for name, app in local.state.items():
            print(f"{name}: {len(app['instances'])} instance(s), routes {', '.join(app['routes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
