"""A loopback-only JSON control API for a running BBS double, so demos and the local push command can act
as a Diego cell would: desire LRPs with routes, start, crash, evacuate, suspect, retire and remove
instances, and inject faults (failing requests, a hang, a restart with or without its state, closed
event streams). Each call emits the events a real BBS does (bbs_double.server). `AdminClient` is its
typed client.

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
    POST /hang                  stop answering (connections accepted, nothing answered or streamed)
    DELETE /hang                answer again (held requests and events go out)
    POST /restart               {"keep_state" (default true)}: restart on the same port; false: empty
    POST /event_streams/close   end the open event streams cleanly
    GET  /state                 desired process guids and their instances, "hung", "subscribers"
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from bbs_double.server import BBSDouble
from copilot.protos import bbs_pb2
from daemon_kit.httpd import Server, reply

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


class AdminServer(Server):
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
            if method == "POST" and path == "/hang":
                double.hang()
                return 200, {"hung": True}
            if method == "DELETE" and path == "/hang":
                double.resume()
                return 200, {"hung": False}
            if method == "POST" and path == "/restart":
                keep_state = body.get("keep_state", True)
                if not isinstance(keep_state, bool):
                    raise TypeError("keep_state must be true or false")
                double.restart(keep_state=keep_state)  # cuts the BBS connections, not this API's
                return 200, {"restarted": True, "keep_state": keep_state}
            if method == "POST" and path == "/event_streams/close":
                double.close_event_streams()
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
                reply(self, code, answer)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._serve("DELETE")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__("127.0.0.1", port, Handler, "bbs-admin")


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
        "hung": double.hung,
        "subscribers": double.subscriber_count(),
    }


class AdminError(RuntimeError):
    """The admin API refused a call (4xx) or could not be reached."""


class AdminClient:
    """A typed client of the admin API (the double in another process, as `./scripts/run-local` runs it)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = requests.request(method, self._url + path, json=body or {}, timeout=self._timeout)
        except requests.RequestException as error:
            raise AdminError(f"BBS double admin API {method} {path}: {error}") from error
        if response.status_code != 200:
            raise AdminError(f"BBS double admin API {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/state")

    def fail_requests(
        self,
        path: str = "*",
        error_type: int | str = 0,
        *,
        count: int = 1,
        message: str = "",
        http_status: int | None = None,
    ) -> None:
        """As BBSDouble.fail_requests; `error_type` may be an Error.Type name ("Unrecoverable")."""
        body: dict[str, Any] = {"path": path, "error_type": error_type, "count": count, "message": message}
        if http_status is not None:
            body["http_status"] = http_status
        self._call("POST", "/failures", body)

    def clear_failures(self) -> None:
        self._call("DELETE", "/failures")

    def hang(self) -> None:
        self._call("POST", "/hang")

    def resume(self) -> None:
        self._call("DELETE", "/hang")

    def restart(self, *, keep_state: bool = True) -> None:
        """Returns once the double listens again (empty unless `keep_state`)."""
        self._call("POST", "/restart", {"keep_state": keep_state})

    def close_event_streams(self) -> None:
        self._call("POST", "/event_streams/close")
