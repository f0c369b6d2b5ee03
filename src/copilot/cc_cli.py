"""`copilot-cc`: an operator's client for Copilot's Cloud Controller API, calling every RPC with the right
certificates (what grpcurl was for with the original). Prints responses as JSON.

    copilot-cc --address 10.0.0.5:9000 --ca ca.pem --cert cc.pem --key cc.key list-routes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from copilot.protos import cc_copilot_pb2 as api
from copilot.protos import cc_copilot_pb2_grpc as api_grpc

CHUNK = 64 * 1024


def channel(address: str, ca: Path, cert: Path, key: Path, server_name: str | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def bulk_sync_chunks(request: api.BulkSyncRequest):
    """Serializes one BulkSyncRequest and streams it in 64 KiB chunks, as Cloud Controller does."""
    payload = request.SerializeToString()
    for start in range(0, max(len(payload), 1), CHUNK):
        yield api.BulkSyncRequestChunk(chunk=payload[start : start + CHUNK])


def _mapping(args: argparse.Namespace) -> api.RouteMapping:
    return api.RouteMapping(capi_process_guid=args.capi_process_guid, route_guid=args.route_guid, route_weight=args.weight)


def run(args: argparse.Namespace, stub: api_grpc.CloudControllerCopilotStub, timeout: float):
    command = args.command
    if command == "health":
        return stub.Health(api.HealthRequest(), timeout=timeout)
    if command == "list-routes":
        return stub.ListCfRoutes(api.ListCfRoutesRequest(), timeout=timeout)
    if command == "list-mappings":
        return stub.ListCfRouteMappings(api.ListCfRouteMappingsRequest(), timeout=timeout)
    if command == "list-associations":
        return stub.ListCapiDiegoProcessAssociations(api.ListCapiDiegoProcessAssociationsRequest(), timeout=timeout)
    if command == "upsert-route":
        route = api.Route(guid=args.guid, host=args.host, path=args.path, internal=args.internal, vip=args.vip)
        return stub.UpsertRoute(api.UpsertRouteRequest(route=route), timeout=timeout)
    if command == "delete-route":
        return stub.DeleteRoute(api.DeleteRouteRequest(guid=args.guid), timeout=timeout)
    if command == "map-route":
        return stub.MapRoute(api.MapRouteRequest(route_mapping=_mapping(args)), timeout=timeout)
    if command == "unmap-route":
        return stub.UnmapRoute(api.UnmapRouteRequest(route_mapping=_mapping(args)), timeout=timeout)
    if command == "upsert-association":
        association = api.CapiDiegoProcessAssociation(
            capi_process_guid=args.capi_process_guid, diego_process_guids=args.diego_process_guid
        )
        request = api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
        return stub.UpsertCapiDiegoProcessAssociation(request, timeout=timeout)
    if command == "delete-association":
        request = api.DeleteCapiDiegoProcessAssociationRequest(capi_process_guid=args.capi_process_guid)
        return stub.DeleteCapiDiegoProcessAssociation(request, timeout=timeout)
    if command == "bulk-sync":
        request = json_format.Parse(Path(args.file).read_text(), api.BulkSyncRequest())
        return stub.BulkSync(bulk_sync_chunks(request), timeout=timeout)
    raise SystemExit(f"unknown command {command}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="copilot-cc", description="Call Copilot's Cloud Controller API over mutual TLS.")
    p.add_argument("--address", required=True, help="host:port of Copilot's CC API")
    p.add_argument("--ca", type=Path, required=True, help="CA that signed Copilot's server certificate")
    p.add_argument("--cert", type=Path, required=True, help="client certificate (signed by Copilot's client CA)")
    p.add_argument("--key", type=Path, required=True, help="client private key")
    p.add_argument("--server-name", help="name to verify in Copilot's certificate (default: the address host)")
    p.add_argument("--timeout", type=float, default=30.0)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("health", "list-routes", "list-mappings", "list-associations"):
        sub.add_parser(name)
    upsert = sub.add_parser("upsert-route")
    upsert.add_argument("--guid", required=True)
    upsert.add_argument("--host", required=True)
    upsert.add_argument("--path", default="")
    upsert.add_argument("--internal", action="store_true")
    upsert.add_argument("--vip", default="")
    sub.add_parser("delete-route").add_argument("--guid", required=True)
    for name in ("map-route", "unmap-route"):
        mapping = sub.add_parser(name)
        mapping.add_argument("--route-guid", required=True)
        mapping.add_argument("--capi-process-guid", required=True)
        mapping.add_argument("--weight", type=int, default=1)
    association = sub.add_parser("upsert-association")
    association.add_argument("--capi-process-guid", required=True)
    association.add_argument("--diego-process-guid", action="append", required=True, help="repeat for each")
    sub.add_parser("delete-association").add_argument("--capi-process-guid", required=True)
    sub.add_parser("bulk-sync", help="replace CC state from a BulkSyncRequest in JSON").add_argument("--file", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with channel(args.address, args.ca, args.cert, args.key, args.server_name) as ch:
        stub = api_grpc.CloudControllerCopilotStub(ch)
        try:
            response = run(args, stub, args.timeout)
        except grpc.RpcError as error:
            print(f"copilot-cc: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
