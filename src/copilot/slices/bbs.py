"""The BBS slice: Diego's desired LRPs (each process's routes) and the serving instances of each.

Instances are kept by what identifies them, as BBS and route-emitter do: process guid, index,
instance guid and presence. Two instances at one index (an evacuating copy and its replacement, or a
restarted instance whose predecessor's removal has not arrived yet) both serve, and removing one never
removes the other. Only serving instances are kept: an update saying an instance no longer serves
removes it.

Every change records what it touched: the hosts and router TCP ports whose routes or backends changed,
and the processes (Cloud Controller's routes mapped to them take their backends and container port
from here; copilot.views resolves those). Writers are the BBS watcher's threads; copilot.views reads
with `lock` held.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Set

from copilot.model import HttpRoute, Instance, ProcessRoutes
from copilot.slices.index import GuidIndex

# An instance within its process: (index, instance guid, presence), presence as BBS's ORDINARY=0,
# EVACUATING=1, SUSPECT=2 (an evacuating copy has its instance's guid).
InstanceKey = tuple[int, str, int]

NOTHING: frozenset = frozenset()  # what a slice answers when nothing was touched
INDEXED_ROUTES = 16  # a process with more HTTP routes than this has them indexed by host


def instance_key(presence: int, instance: Instance) -> InstanceKey:
    """The key of an instance (with its presence) in the slice and in `replace`'s listing."""
    return (instance.index, instance.instance_guid, presence)


class BbsSlice:
    """Desired LRPs and serving instances; thread-safe; records the hosts, ports and processes touched."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._desired: dict[str, ProcessRoutes] = {}
        self._instances: dict[str, dict[InstanceKey, Instance]] = defaultdict(dict)
        self._hosts: GuidIndex[str] = GuidIndex()  # host -> process guids routing to it
        self._tcp_ports: GuidIndex[int] = GuidIndex()  # external port -> process guids routing it
        # Per process with many HTTP routes, its routes by host: a host's view reads its own routes, not
        # all of them (an app with 1,000 route hosts would otherwise cost 1,000 x 1,000 per event).
        self._routes_by_host: dict[str, dict[str, list[HttpRoute]]] = {}
        self._touched_hosts: set[str] = set()
        self._touched_ports: set[int] = set()
        self._touched_processes: set[str] = set()
        self._watchers: list[Callable[[], None]] = []

    def watch(self, callback: Callable[[], None]) -> None:
        """Calls `callback` (cheap, on the writer's thread) after every write that changed something."""
        self._watchers.append(callback)

    # ---- writing (the BBS watcher)
    def upsert_process(self, process_guid: str, routes: ProcessRoutes) -> None:
        with self.lock:
            changed = self._upsert_process(process_guid, routes)
        if changed:
            self._notify()

    def remove_process(self, process_guid: str) -> None:
        with self.lock:
            self._remove_process(process_guid)
        self._notify()

    def upsert_instance(self, presence: int, instance: Instance) -> None:
        """Records an instance as BBS reports it; one that does not serve (any more) is removed."""
        if not instance.serving:
            self.remove_instance(instance.process_guid, instance.index, presence, instance.instance_guid)
            return
        with self.lock:
            per_process = self._instances[instance.process_guid]
            key = instance_key(presence, instance)
            if per_process.get(key) == instance:
                return
            per_process[key] = instance
            self._touch_process(instance.process_guid)
        self._notify()

    def remove_instance(self, process_guid: str, index: int, presence: int, instance_guid: str) -> None:
        """Removes that one instance; another one at the same index and presence stays."""
        with self.lock:
            per_process = self._instances.get(process_guid)
            if not per_process or per_process.pop((index, instance_guid, presence), None) is None:
                return
            self._touch_process(process_guid)
            if not per_process:
                del self._instances[process_guid]
        self._notify()

    def replace(self, processes: dict[str, ProcessRoutes], instances: dict[str, dict[InstanceKey, Instance]]) -> None:
        """Makes the slice exactly what a full listing says (its instances keyed by `instance_key`;
        those that do not serve are left out); only what differs is touched."""
        listed = {}
        for guid, by_key in instances.items():
            serving = {key: instance for key, instance in by_key.items() if instance.serving}
            if serving:
                listed[guid] = serving
        with self.lock:
            for guid in [g for g in self._desired if g not in processes]:
                self._remove_process(guid)
            for guid in [g for g in self._instances if g not in listed]:
                self._touch_process(guid)
                del self._instances[guid]
            for guid, routes in processes.items():
                self._upsert_process(guid, routes)
            for guid, by_key in listed.items():
                if self._instances.get(guid) != by_key:
                    self._instances[guid] = by_key
                    self._touch_process(guid)
        self._notify()

    # ---- reading
    def hosts(self) -> set[str]:
        with self.lock:
            return self._hosts.keys()  # a key goes with its last process

    def tcp_ports(self) -> set[int]:
        with self.lock:
            return self._tcp_ports.keys()

    def take_touched(self) -> tuple[Set[str], Set[int], Set[str]]:
        """(hosts, TCP ports, process guids) touched since the last call (the caller's to keep)."""
        with self.lock:
            if not (self._touched_hosts or self._touched_ports or self._touched_processes):
                return NOTHING, NOTHING, NOTHING  # most publishes: a cheap answer
            touched = self._touched_hosts, self._touched_ports, self._touched_processes
            self._touched_hosts, self._touched_ports, self._touched_processes = set(), set(), set()
            return touched

    def processes_of_host(self, host: str) -> Iterable[str]:
        """The process guids routing `host` (call with `lock` held)."""
        return self._hosts.get(host)

    def processes_of_port(self, port: int) -> Iterable[str]:
        """The process guids routing router TCP port `port` (call with `lock` held)."""
        return self._tcp_ports.get(port)

    def routes(self, process_guid: str) -> ProcessRoutes | None:
        """A process's routes (call with `lock` held; ProcessRoutes is immutable)."""
        return self._desired.get(process_guid)

    def http_routes(self, process_guid: str, host: str) -> Iterable[HttpRoute]:
        """A process's HTTP routes for `host`, in the order of its routes (call with `lock` held)."""
        by_host = self._routes_by_host.get(process_guid)
        if by_host is not None:
            return by_host.get(host, ())
        routes = self._desired.get(process_guid)
        return [route for route in routes.http if route.host == host] if routes is not None else ()

    def instances(self, process_guid: str) -> Iterable[Instance]:
        """A process's serving instances (call with `lock` held)."""
        per_process = self._instances.get(process_guid)
        return per_process.values() if per_process else ()

    def internal_addresses(self) -> dict[str, list[str]]:
        """Service discovery's names (service_discovery.py): for every DesiredLRP `internal-router`
        hostname, its name and `<index>.<name>` mapped to the sorted container addresses of the
        RUNNING, routable instances (what route-emitter registered with service-discovery-controller).
        Names without such an instance are left out. O(processes), the lock held only to copy what
        is needed (routes and instances are immutable)."""
        with self.lock:
            taken = [
                (routes.internal, list(self._instances.get(guid, {}).values()))
                for guid, routes in self._desired.items()
                if routes.internal
            ]
        names: dict[str, set[str]] = defaultdict(set)
        for internal, instances in taken:
            for instance in instances:
                if not instance.serving or not instance.instance_address:
                    continue
                for route in internal:
                    names[route.host].add(instance.instance_address)
                    names[f"{instance.index}.{route.host}"].add(instance.instance_address)
        return {name: sorted(addresses) for name, addresses in names.items()}

    def serving_instance_guids(self) -> set[str]:
        """The instance guids of every serving instance."""
        with self.lock:
            return {key[1] for per in self._instances.values() for key in per if key[1]}

    def counts(self) -> tuple[int, int]:
        """(routes, backends): http routes known, and serving instances."""
        with self.lock:
            routes = sum(len(r.http) for r in self._desired.values())
            backends = sum(1 for per in self._instances.values() for i in per.values() if i.serving)
            return routes, backends

    # ---- internals (lock held)
    def _upsert_process(self, process_guid: str, routes: ProcessRoutes) -> bool:
        old = self._desired.get(process_guid)
        if old == routes:
            return False
        self._unindex(process_guid, old)
        self._desired[process_guid] = routes
        self._index(process_guid, routes)
        # Only the hosts (and TCP ports) whose routes to this process changed need rebuilding.
        if old is not None and old.app_guid != routes.app_guid:
            self._touched_hosts.update(route.host for route in set(old.http) | set(routes.http))
        else:
            self._touched_hosts.update(route.host for route in set(old.http if old else ()) ^ set(routes.http))
        self._touched_ports.update(route.external_port for route in set(old.tcp if old else ()) ^ set(routes.tcp))
        self._touched_processes.add(process_guid)  # CC routes take their container port from these routes
        return True

    def _remove_process(self, process_guid: str) -> None:
        old = self._desired.pop(process_guid, None)
        self._unindex(process_guid, old)
        self._touch(old)
        self._touched_processes.add(process_guid)  # CC routes mapped to it lose its backends (and its port)
        self._instances.pop(process_guid, None)

    def _index(self, guid: str, routes: ProcessRoutes) -> None:
        for route in routes.http:
            self._hosts.add(route.host, guid)
        if len(routes.http) > INDEXED_ROUTES:
            by_host: dict[str, list[HttpRoute]] = defaultdict(list)
            for route in routes.http:
                by_host[route.host].append(route)
            self._routes_by_host[guid] = dict(by_host)
        for tcp in routes.tcp:
            self._tcp_ports.add(tcp.external_port, guid)

    def _unindex(self, guid: str, routes: ProcessRoutes | None) -> None:
        self._routes_by_host.pop(guid, None)
        for route in routes.http if routes else ():
            self._hosts.discard(route.host, guid)
        for tcp in routes.tcp if routes else ():
            self._tcp_ports.discard(tcp.external_port, guid)

    def _touch_process(self, guid: str) -> None:
        self._touch(self._desired.get(guid))
        self._touched_processes.add(guid)

    def _touch(self, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            self._touched_hosts.add(route.host)
        for tcp in routes.tcp if routes else ():
            self._touched_ports.add(tcp.external_port)

    def _notify(self) -> None:
        for callback in self._watchers:
            callback()
