"""The Cloud Controller slice: CC's routes, its weighted mappings of routes to CC processes, and each CC
process's Diego processes (`<process guid>-<version>`; two during a rolling deploy).

Callers validate (sources/cc_validation.py). Every change records the hosts it touched: external
hosts (routed by the routers) and internal hosts (container-to-container, with a VIP) apart. Writers
are the CC gRPC API's threads; copilot.views reads with `lock` held.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Set

from copilot.model import CCRoute, CCState
from copilot.slices.bbs import NOTHING
from copilot.slices.index import GuidIndex


class CcSlice:
    """Cloud Controller's routes, mappings and associations; thread-safe; records the hosts touched."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._routes: dict[str, CCRoute] = {}
        self._weights: dict[str, dict[str, int]] = defaultdict(dict)  # route guid -> CC process guid -> weight
        self._associations: dict[str, tuple[str, ...]] = {}  # CC process guid -> Diego process guids
        self._external: GuidIndex[str] = GuidIndex()  # external host -> CC route guids
        self._internal: GuidIndex[str] = GuidIndex()  # internal host -> CC route guids
        self._routes_by_capi: GuidIndex[str] = GuidIndex()  # CC process guid -> route guids mapped to it
        self._capi_by_diego: GuidIndex[str] = GuidIndex()  # Diego process guid -> CC process guids
        self._touched_external: set[str] = set()
        self._touched_internal: set[str] = set()

    # ---- writing (the Cloud Controller API)
    def upsert_route(self, route: CCRoute) -> None:
        with self.lock:
            old = self._routes.get(route.guid)
            if old == route:
                return
            if old is not None:
                self._unindex_route(old)
            self._routes[route.guid] = route
            (self._internal if route.internal else self._external).add(route.host, route.guid)
            self._touch_route(route.guid)

    def delete_route(self, guid: str) -> None:
        with self.lock:
            old = self._routes.pop(guid, None)
            if old is not None:
                self._unindex_route(old)

    def map_route(self, route_guid: str, capi_guid: str, weight: int) -> None:
        with self.lock:
            if self._weights[route_guid].get(capi_guid) == weight:
                return
            self._weights[route_guid][capi_guid] = weight
            self._routes_by_capi.add(capi_guid, route_guid)
            self._touch_route(route_guid)

    def unmap_route(self, route_guid: str, capi_guid: str) -> None:
        with self.lock:
            weights = self._weights.get(route_guid, {})
            if weights.pop(capi_guid, None) is None:
                return
            if not weights:
                del self._weights[route_guid]
            self._routes_by_capi.discard(capi_guid, route_guid)
            self._touch_route(route_guid)

    def upsert_association(self, capi_guid: str, diego_guids: tuple[str, ...]) -> None:
        with self.lock:
            old = self._associations.get(capi_guid, ())
            if old == diego_guids:
                return
            for guid in old:
                self._capi_by_diego.discard(guid, capi_guid)
            self._associations[capi_guid] = diego_guids
            for guid in diego_guids:
                self._capi_by_diego.add(guid, capi_guid)
            for route_guid in self._routes_by_capi.get(capi_guid):
                self._touch_route(route_guid)

    def delete_association(self, capi_guid: str) -> None:
        with self.lock:
            for guid in self._associations.pop(capi_guid, ()):
                self._capi_by_diego.discard(guid, capi_guid)
            for route_guid in self._routes_by_capi.get(capi_guid):
                self._touch_route(route_guid)

    def replace(self, state: CCState) -> None:
        """Makes the slice exactly `state` (BulkSync), in one step under the lock."""
        with self.lock:
            for guid in [g for g in self._routes if g not in state.routes]:
                self.delete_route(guid)
            for route_guid, capi_guid in [(r, c) for r, ws in self._weights.items() for c in ws]:
                if (route_guid, capi_guid) not in state.mappings:
                    self.unmap_route(route_guid, capi_guid)
            for capi_guid in [c for c in self._associations if c not in state.associations]:
                self.delete_association(capi_guid)
            for route in state.routes.values():
                self.upsert_route(route)
            for (route_guid, capi_guid), weight in state.mappings.items():
                self.map_route(route_guid, capi_guid, weight)
            for capi_guid, diego_guids in state.associations.items():
                self.upsert_association(capi_guid, diego_guids)

    # ---- reading
    def state(self) -> CCState:
        with self.lock:
            return CCState(
                dict(self._routes),
                {(r, c): w for r, ws in self._weights.items() for c, w in ws.items()},
                dict(self._associations),
            )

    def known(self) -> CCState:
        """The routes and associations held (copies of the dicts; the routes and guid tuples are
        immutable), for a BulkSync to take what it repeats from; no mappings."""
        with self.lock:
            return CCState(dict(self._routes), {}, dict(self._associations))

    def take_touched(self, diego_guids: Iterable[str]) -> tuple[Set[str], Set[str]]:
        """(external hosts, internal hosts) touched since the last call, with those of the routes mapped
        to `diego_guids` (Diego processes whose routes or instances changed); the caller's to keep."""
        with self.lock:
            for guid in diego_guids:
                for capi_guid in self._capi_by_diego.get(guid):
                    for route_guid in self._routes_by_capi.get(capi_guid):
                        self._touch_route(route_guid)
            if not (self._touched_external or self._touched_internal):
                return NOTHING, NOTHING
            touched = self._touched_external, self._touched_internal
            self._touched_external, self._touched_internal = set(), set()
            return touched

    def hosts(self, *, internal: bool = False) -> set[str]:
        """The external (or internal) hosts of CC's routes."""
        with self.lock:
            return (self._internal if internal else self._external).keys()  # a host goes with its last route

    def routes_of_host(self, host: str, *, internal: bool = False) -> list[CCRoute]:
        """The CC routes of an external (or internal) host, by guid (call with `lock` held)."""
        guids = (self._internal if internal else self._external).get(host)
        if not guids:
            return []  # a host only DesiredLRPs route (every host before Cloud Controller's first sync)
        return [self._routes[guid] for guid in sorted(guids)]

    def mapped_processes(self, route_guid: str) -> list[tuple[int, tuple[str, ...]]]:
        """(weight, Diego process guids) of each CC process mapped to a route, by CC process guid (call
        with `lock` held)."""
        weights = self._weights.get(route_guid, {})
        return [(weight, self._associations.get(capi_guid, ())) for capi_guid, weight in sorted(weights.items())]

    # ---- internals (lock held)
    def _touch_route(self, route_guid: str) -> None:
        route = self._routes.get(route_guid)
        if route is not None:
            (self._touched_internal if route.internal else self._touched_external).add(route.host)

    def _unindex_route(self, route: CCRoute) -> None:
        (self._internal if route.internal else self._external).discard(route.host, route.guid)
        (self._touched_internal if route.internal else self._touched_external).add(route.host)
