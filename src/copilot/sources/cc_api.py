"""The `api.CloudControllerCopilot` gRPC service Cloud Controller calls (cf-copilot contract), over mutual TLS.

Every request is validated before anything changes: a rejected request (InvalidArgument, naming the
field) leaves the CC slice (copilot.slices.cc) exactly as it was. BulkSync replaces the whole slice atomically.
Sizes are bounded: each field (cc_validation), each gRPC message (MAX_MESSAGE_BYTES, else
ResourceExhausted) and a whole BulkSync (MAX_BULK_SYNC_BYTES in at most MAX_BULK_SYNC_CHUNKS chunks).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError

from copilot import gc_pause
from copilot.model import CCState, InvalidRoute
from copilot.protos import cc_copilot_pb2 as api
from copilot.protos import cc_copilot_pb2_grpc as api_grpc
from copilot.slices.cc import CcSlice
from copilot.sources import cc_validation

log = logging.getLogger(__name__)

# gRPC's default receive limit, which cf-copilot's server ran with and Cloud Controller's client is built
# for: CC streams a BulkSync in 64 KiB chunks (chunking exists because one message hit this limit), and
# the largest valid unary request, an association of MAX_DIEGO_PROCESS_GUIDS guids of MAX_GUID_LENGTH
# characters, is about 260 KB.
MAX_MESSAGE_BYTES = 4 << 20
# A whole BulkSync. 100,000 routes (hosts of ~50 characters, a fifth with a path) with 125,000 mappings
# and 100,000 associations serialize to about 31 MB; 150,000 of each, two Diego guids per association,
# to about 55 MB (tests/unit/test_cc_api.py). 512 MB leaves room for ten times a large foundation.
MAX_BULK_SYNC_BYTES = 512 << 20
MAX_BULK_SYNC_CHUNKS = 1 << 20  # 8,192 of CC's 64 KiB chunks make MAX_BULK_SYNC_BYTES


class CloudControllerCopilot(api_grpc.CloudControllerCopilotServicer):
    def __init__(self, cc: CcSlice, on_change: Callable[[], None]) -> None:
        self._cc = cc
        self._on_change = on_change
        self.bulk_synced = threading.Event()

    def Health(self, request: api.HealthRequest, context: grpc.ServicerContext) -> api.HealthResponse:  # noqa: N802
        return api.HealthResponse(healthy=True)

    def UpsertRoute(self, request: api.UpsertRouteRequest, context: grpc.ServicerContext) -> api.UpsertRouteResponse:  # noqa: N802
        route = _valid(context, lambda: cc_validation.route(request.route))
        self._cc.upsert_route(route)
        self._on_change()
        return api.UpsertRouteResponse()

    def DeleteRoute(self, request: api.DeleteRouteRequest, context: grpc.ServicerContext) -> api.DeleteRouteResponse:  # noqa: N802
        _valid(context, lambda: cc_validation.guid(request.guid, "guid"))
        self._cc.delete_route(request.guid)
        self._on_change()
        return api.DeleteRouteResponse()

    def MapRoute(self, request: api.MapRouteRequest, context: grpc.ServicerContext) -> api.MapRouteResponse:  # noqa: N802
        route_guid, capi_guid, weight = _valid(context, lambda: cc_validation.mapping(request.route_mapping))
        self._cc.map_route(route_guid, capi_guid, weight)
        self._on_change()
        return api.MapRouteResponse()

    def UnmapRoute(self, request: api.UnmapRouteRequest, context: grpc.ServicerContext) -> api.UnmapRouteResponse:  # noqa: N802
        route_guid, capi_guid, _ = _valid(context, lambda: cc_validation.mapping(request.route_mapping))
        self._cc.unmap_route(route_guid, capi_guid)
        self._on_change()
        return api.UnmapRouteResponse()

    def UpsertCapiDiegoProcessAssociation(self, request, context):  # noqa: N802
        capi_guid, diego_guids = _valid(context, lambda: cc_validation.association(request.capi_diego_process_association))
        self._cc.upsert_association(capi_guid, diego_guids)
        self._on_change()
        return api.UpsertCapiDiegoProcessAssociationResponse()

    def DeleteCapiDiegoProcessAssociation(self, request, context):  # noqa: N802
        _valid(context, lambda: cc_validation.guid(request.capi_process_guid, "capi_process_guid"))
        self._cc.delete_association(request.capi_process_guid)
        self._on_change()
        return api.DeleteCapiDiegoProcessAssociationResponse()

    def BulkSync(self, request_iterator: Iterator[api.BulkSyncRequestChunk], context: grpc.ServicerContext):  # noqa: N802
        chunks: list[bytes] = []
        received = 0
        for chunk in request_iterator:
            received += len(chunk.chunk)
            if received > MAX_BULK_SYNC_BYTES:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"chunk: bulk sync exceeds {MAX_BULK_SYNC_BYTES} bytes")
            if len(chunks) == MAX_BULK_SYNC_CHUNKS:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"chunk: bulk sync exceeds {MAX_BULK_SYNC_CHUNKS} chunks")
            chunks.append(chunk.chunk)
        # Each stage's input is let go once the next is made (the chunks, their join, the parsed request,
        # the validated state: some 100 MiB at 100,000 routes), before the publish the sync asks for.
        payload = b"".join(chunks)
        del chunks
        try:
            request = api.BulkSyncRequest.FromString(payload)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk: the {received} bytes received are not a BulkSyncRequest")
        del payload
        with gc_pause.paused():  # 300,000 entries validated into objects the slice keeps
            state = _valid(context, functools.partial(bulk_state, request, self._cc.known()))
            del request
            self._cc.replace(state)
            counts = {"routes": len(state.routes), "mappings": len(state.mappings)}
            del state
        self.bulk_synced.set()
        self._on_change()
        log.info("bulk sync applied", extra={"bytes": received, **counts})
        return api.BulkSyncResponse(total_bytes_received=received)

    def ListCfRoutes(self, request, context):  # noqa: N802
        return api.ListCfRoutesResponse(routes={guid: route.host for guid, route in self._cc.state().routes.items()})

    def ListCfRouteMappings(self, request, context):  # noqa: N802
        mappings = self._cc.state().mappings
        return api.ListCfRouteMappingsResponse(
            route_mappings={
                f"{route_guid}-{capi_guid}": api.RouteMapping(
                    capi_process_guid=capi_guid, route_guid=route_guid, route_weight=weight
                )
                for (route_guid, capi_guid), weight in mappings.items()
            }
        )

    def ListCapiDiegoProcessAssociations(self, request, context):  # noqa: N802
        associations = self._cc.state().associations
        return api.ListCapiDiegoProcessAssociationsResponse(
            capi_diego_process_associations={
                capi: api.DiegoProcessGuids(diego_process_guids=list(guids)) for capi, guids in associations.items()
            }
        )


def bulk_state(request: api.BulkSyncRequest, known: CCState | None = None) -> CCState:
    """Validates a whole BulkSync; the first problem found rejects all of it. A route or association equal
    to one in `known` (what the slice holds) is taken from there: a sync that changes little (Cloud
    Controller repeats it every 30 s) then holds little more than the slice beside it (at 100,000
    routes 18 MiB instead of 82)."""
    cc_validation.entries(len(request.routes), "routes")
    cc_validation.entries(len(request.route_mappings), "route_mappings")
    cc_validation.entries(len(request.capi_diego_process_associations), "capi_diego_process_associations")
    known_routes = known.routes if known is not None else {}
    known_associations = known.associations if known is not None else {}
    routes = {}
    for i, message in enumerate(request.routes):
        route = cc_validation.route(message, f"routes[{i}]")
        old = known_routes.get(route.guid)
        if old == route:
            route = old  # its guid too: the key below is the slice's string
        routes[route.guid] = route
    # Each guid read from the request is a new string: one string per guid for all three lists (the
    # slice would keep a route guid and a CC process guid two or three times each).
    one = {guid: guid for guid in routes}
    one.update((guid, guid) for guid in known_associations)
    same = one.setdefault
    mappings = {}
    for i, message in enumerate(request.route_mappings):
        route_guid, capi_guid, weight = cc_validation.mapping(message, f"route_mappings[{i}]")
        mappings[(same(route_guid, route_guid), same(capi_guid, capi_guid))] = weight
    associations = {}
    for i, message in enumerate(request.capi_diego_process_associations):
        capi_guid, diego_guids = cc_validation.association(message, f"capi_diego_process_associations[{i}]")
        old_guids = known_associations.get(capi_guid)
        associations[same(capi_guid, capi_guid)] = old_guids if old_guids == diego_guids else diego_guids
    return CCState(routes, mappings, associations)


def _valid(context: grpc.ServicerContext, check):
    try:
        return check()
    except InvalidRoute as error:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def serve(
    servicer: CloudControllerCopilot, address: str, *, cert: bytes, key: bytes, client_ca: bytes
) -> tuple[grpc.Server, int]:
    """Listens with mutual TLS: a client certificate signed by `client_ca` is required."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="cc-api"),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)],
    )
    api_grpc.add_CloudControllerCopilotServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    port = server.add_secure_port(address, credentials)
    server.start()
    return server, port
