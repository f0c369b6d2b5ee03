"""The merged routing state: what each source (Diego BBS today) says, joined into routes per host.

Sources write their own slice; the table tracks which hosts a change touched so the Istio config
is rebuilt only for those ("dirty" hosts), which is what keeps one event cheap at 100k routes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from copilot.model import Destination, HttpRoute, Instance, ProcessRoutes, normalize_weights

# An ActualLRP is identified by its process, index and presence (ORDINARY=0, EVACUATING=1, SUSPECT=2).
InstanceKey = tuple[int, int]


@dataclass
class HostRoutes:
    """Everything needed to build the Istio config of one hostname."""

    host: str
    # path ("" for the root) -> weighted destinations, in a stable order
    paths: dict[str, list[Destination]]


class RoutingTable:
    """Routes and backends from every source; thread-safe; reports which hosts changed."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._desired: dict[str, ProcessRoutes] = {}
        self._instances: dict[str, dict[InstanceKey, Instance]] = defaultdict(dict)
        self._hosts: dict[str, set[str]] = defaultdict(set)  # host -> process guids routing to it
        self._dirty: set[str] = set()

    # ---- BBS slice
    def upsert_process(self, process_guid: str, routes: ProcessRoutes) -> None:
        with self._lock:
            old = self._desired.get(process_guid)
            if old == routes:
                return
            self._unindex(process_guid, old)
            self._desired[process_guid] = routes
            self._index(process_guid, routes)
            # Only the hosts whose routes to this process changed need rebuilding.
            self._dirty.update(route.host for route in set(old.http if old else ()) ^ set(routes.http))

    def remove_process(self, process_guid: str) -> None:
        with self._lock:
            old = self._desired.pop(process_guid, None)
            self._unindex(process_guid, old)
            self._touch(old)
            self._instances.pop(process_guid, None)

    def upsert_instance(self, presence: int, instance: Instance) -> None:
        with self._lock:
            per_process = self._instances[instance.process_guid]
            key = (instance.index, presence)
            if per_process.get(key) == instance:
                return
            per_process[key] = instance
            self._touch_process(instance.process_guid)

    def remove_instance(self, process_guid: str, index: int, presence: int) -> None:
        with self._lock:
            per_process = self._instances.get(process_guid)
            if per_process and per_process.pop((index, presence), None) is not None:
                self._touch_process(process_guid)
                if not per_process:
                    del self._instances[process_guid]

    def replace_bbs_state(self, processes: dict[str, ProcessRoutes], instances: dict[str, dict[InstanceKey, Instance]]) -> None:
        """Makes the BBS slice exactly what a full listing says; only what differs becomes dirty."""
        with self._lock:
            for guid in list(self._desired):
                if guid not in processes:
                    self.remove_process(guid)
            for guid in list(self._instances):
                if guid not in instances:
                    self._touch_process(guid)
                    del self._instances[guid]
            for guid, routes in processes.items():
                self.upsert_process(guid, routes)
            for guid, by_key in instances.items():
                if self._instances.get(guid) != by_key:
                    self._instances[guid] = dict(by_key)
                    self._touch_process(guid)

    # ---- reading
    def take_dirty_hosts(self) -> set[str]:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    def hosts(self) -> list[str]:
        with self._lock:
            return [h for h, guids in self._hosts.items() if guids]

    def host_routes(self, host: str) -> HostRoutes | None:
        """The routes of one host with their backends, or None when no process routes to it."""
        with self._lock:
            guids = self._hosts.get(host)
            if not guids:
                return None
            paths: dict[str, list[Destination]] = defaultdict(list)
            for guid in sorted(guids):
                for route in self._desired[guid].http:
                    if route.host != host:
                        continue
                    paths[route.path].append(self._destination(guid, route))
            for destinations in paths.values():
                for dest, weight in zip(destinations, normalize_weights([d.weight for d in destinations]), strict=True):
                    dest.weight = weight
            return HostRoutes(host, dict(paths))

    def counts(self) -> tuple[int, int]:
        """(routes, backends): http routes known, and serving instances."""
        with self._lock:
            routes = sum(len(r.http) for r in self._desired.values())
            backends = sum(1 for per in self._instances.values() for i in per.values() if i.serving)
            return routes, backends

    # ---- internals
    def _destination(self, guid: str, route: HttpRoute) -> Destination:
        backends = []
        for _, instance in sorted(self._instances.get(guid, {}).items()):
            backend = instance.backend_for(route.container_port)
            if backend is not None:
                backends.append(backend)
        return Destination(guid, route.container_port, 1, route.protocol, sorted(backends))

    def _index(self, guid: str, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            self._hosts[route.host].add(guid)

    def _unindex(self, guid: str, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            guids = self._hosts.get(route.host)
            if guids is not None:
                guids.discard(guid)
                if not guids:
                    del self._hosts[route.host]

    def _touch_process(self, guid: str) -> None:
        self._touch(self._desired.get(guid))

    def _touch(self, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            self._dirty.add(route.host)
