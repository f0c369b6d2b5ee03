"""A loopback-only JSON control API for a running BBS double, so demos and the local push command can act
as a Diego cell would: desire LRPs with routes, start, crash, evacuate, suspect, retire and remove
instances, and make BBS requests fail. Each call emits the events a real BBS does (bbs_double.server).

    POST /desired_lrps          {"process_guid", "http_routes", "tcp_routes", "internal_routes", "instances"}
    DELETE /desired_lrps/<guid>
    POST /instances             {"process_guid", "index", "host_port", "instance_guid", "container_port",
                                 "routable", "readiness_check", ...}
    POST /instances/routable    {"process_guid", "index", "routable"}
    POST /instances/crash       {"process_guid", "index", "restart"}
    POST /instances/evacuate    {"process_guid", "index"}
    POST /instances/suspect     {"process_guid", "index"}
    POST /instances/retire      {"process_guid", "index"}
    POST /instances/remove      {"process_guid", "index", "evacuating"}
    POST /cells/lose            {"cell_id"}: its RUNNING instances become SUSPECT
    POST /failures              {"path" (default "*"), "error_type" (a number or a name, default 0),
                                 "count" (default 1), "message", "http_status"}: fail the next requests
    DELETE /failures            cancel every injected failure
    GET  /state                 desired process guids and their instances
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bbs_double.server import BBSDouble
from copilot.protos import bbs_pb2

_START_FIELDS = {
    "host_port",
    "container_port",
    "instance_guid",
    "address",
    "instance_address",
    "preferred_address",
    "host_tls_proxy_port",
    "container_tls_proxy_port",
    "availability_zone",
    "routable",
    "cell_id",
    "readiness_check",
    "extra_ports",
}
_DESIRE_FIELDS = {"http_routes", "tcp_routes", "internal_routes", "instances", "domain", "ports"}


class AdminServer:
    def __init__(self, double: BBSDouble, port: int = 0) -> None:
        def handle(method: str, path: str, body: dict) -> tuple[int, object]:
            if method == "GET" and path == "/state":
                return 200, _state(double)
            if method == "POST" and path == "/desired_lrps":
                double.desire_lrp(body["process_guid"], **{k: v for k, v in body.items() if k in _DESIRE_FIELDS})
                return 200, {"desired": body["process_guid"]}
            if method == "DELETE" and path.startswith("/desired_lrps/"):
                double.remove_desired_lrp(path.rsplit("/", 1)[1])
                return 200, {"removed": path.rsplit("/", 1)[1]}
            if method == "POST" and path == "/instances":
                options = {k: v for k, v in body.items() if k in _START_FIELDS}
                guid = double.start_instance(body["process_guid"], int(body["index"]), **options)
                return 200, {"instance_guid": guid}
            if method == "POST" and path == "/instances/routable":
                double.set_routable(body["process_guid"], int(body["index"]), body.get("routable"))
                return 200, {}
            if method == "POST" and path == "/instances/crash":
                double.crash_instance(body["process_guid"], int(body["index"]), restart=body.get("restart"))
                return 200, {}
            if method == "POST" and path == "/instances/evacuate":
                double.evacuate_instance(body["process_guid"], int(body["index"]))
                return 200, {}
            if method == "POST" and path == "/instances/suspect":
                double.suspect_instance(body["process_guid"], int(body["index"]))
                return 200, {}
            if method == "POST" and path == "/instances/retire":
                double.retire_instance(body["process_guid"], int(body["index"]))
                return 200, {}
            if method == "POST" and path == "/cells/lose":
                lost = double.lose_cell(body["cell_id"])
                return 200, {"suspect": [{"process_guid": guid, "index": index} for guid, index in lost]}
            if method == "POST" and path == "/failures":
                error_type = body.get("error_type", 0)
                if isinstance(error_type, str):
                    error_type = bbs_pb2.Error.Type.Value(error_type)
                http_status = body.get("http_status")
                double.fail_requests(
                    body.get("path", "*"),
                    int(error_type),
                    count=int(body.get("count", 1)),
                    message=str(body.get("message", "")),
                    http_status=int(http_status) if http_status is not None else None,
                )
                return 200, {}
            if method == "DELETE" and path == "/failures":
                double.clear_failures()
                return 200, {}
            if method == "POST" and path == "/instances/remove":
                double.remove_instance(body["process_guid"], int(body["index"]), evacuating=bool(body.get("evacuating")))
                return 200, {}
            return 404, {"error": f"no such endpoint: {method} {path}"}

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}")
                    code, answer = handle(method, self.path, body)
                except (KeyError, TypeError, ValueError) as error:
                    code, answer = 400, {"error": f"{type(error).__name__}: {error}"}
                payload = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._serve("DELETE")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="bbs-admin", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _state(double: BBSDouble) -> dict:
    instances: dict[str, list[dict]] = {}
    for lrp in double.actual_lrps():
        key = lrp.actual_lrp_key
        instances.setdefault(key.process_guid, []).append(
            {
                "index": key.index,
                "instance_guid": lrp.actual_lrp_instance_key.instance_guid,
                "state": lrp.state,
                "presence": lrp.presence,
                "routable": lrp.routable if lrp.HasField("routable") else None,
                "ports": [[p.container_port, p.host_port] for p in lrp.actual_lrp_net_info.ports],
            }
        )
    return {
        "desired_lrps": {d.process_guid: {"instances": d.instances} for d in double.desired_lrps()},
        "actual_lrps": instances,
    }
