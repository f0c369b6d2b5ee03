"""Turns what changed in the views (copilot.views) into Istio objects: rebuilds only the touched keys of
each kind of view (external hosts, internal hosts, router TCP ports) with one loop, and hands every
object built and every name no longer needed to `_emit`, on the publisher's own thread (PublishLoop).

It owns the shared services (builder.destination_service: one DestinationRule and ServiceEntry per
destination, whatever number of route hosts route to it): which hosts use which service, each service
built once per publish however many of its hosts are rebuilt, and deleted once no host uses it: at
once, or, with a removal delay, at least that much later, in one publish with the others left unused
in a window after it (the route goes at once with its host's VirtualService; only the service's
deletion, which costs istiod a new service index for every route, waits and is batched)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from copilot import gc_pause, metrics
from copilot.istio.builder import (
    GatewaySettings,
    HostParts,
    build_internal,
    build_router_objects,
    build_tcp,
    host_object_names,
    internal_object_name,
    service_object_names,
    tcp_object_names,
)
from copilot.istio.host_wire import build_host_encoded, build_service_encoded
from copilot.istio.kinds import SERVICE_ENTRY, EncodedObject, IstioObject, Kind
from copilot.model import HostRoutes, View, ViewKind
from copilot.route_service_lookup import InternalLookup
from copilot.views import Key, Views
from copilot.xds.store import Store

log = logging.getLogger(__name__)

# How often the publish loop looks at whether a delayed service removal is due when nothing asked it to.
_RECHECK_SECONDS = 5.0
# A service is kept at least the removal delay and at most this much of it longer: those left unused
# within that window after the oldest go in its push (a mass deletion is one push, not one per second).
_REMOVAL_WINDOW = 0.2


class PublishLoop:
    """Publishes on a thread of its own: sources ask with `request()` and return at once (a BulkSync
    answers Cloud Controller without waiting for 100k hosts to be rebuilt); requests that arrive while
    a publish runs are folded into the next one, so there is never more than one publish pending."""

    def __init__(self, publish: Callable[[], object], due: Callable[[], float | None] = lambda: None) -> None:
        """`due`: seconds until a publish is wanted without a request (Publisher.due), or None."""
        self._publish = publish
        self._due = due
        self._wanted = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def publish_now(self) -> None:
        """Publishes on the caller's thread (the first publish, before istiod is served), timed as every publish."""
        with metrics.PUBLISH_SECONDS.time():
            self._publish()

    def stop(self) -> None:
        self._stopped = True
        self._wanted.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            due = self._due()
            # Until asked, or until a delayed service removal is due; with none due, the wait is looked at
            # again now and then (a publish on another thread, publish_now, may have left one).
            timeout = _RECHECK_SECONDS if due is None else min(due, _RECHECK_SECONDS)
            if not self._wanted.wait(timeout) and (due is None or due > timeout):
                continue  # woke only to look again
            if self._stopped:
                return
            self._wanted.clear()
            try:
                self.publish_now()
            except Exception:  # a bug in one publish must not stop every later one
                log.exception("publish failed")


@dataclass(frozen=True)
class _Builds:
    """How one kind of view becomes Istio objects: `build` its objects (ValueError: the view is refused),
    and `owned` every (kind, name) a key may have, so what was not built is deleted."""

    build: Callable[[View], list[IstioObject] | list[EncodedObject] | HostParts]
    owned: Callable[[Key], list[tuple[Kind, str]]]
    skipped: str  # the warning when a view is refused
    field: str  # the key's name in that warning
    # Whether a view may get fewer objects than its key owns (router shards), so what was not built
    # must be looked for; without shards a host always gets all of its objects (and the look is not free).
    partial: bool


class Publisher:
    """Owns the path views -> builder -> `_emit`; one publish at a time."""

    def __init__(
        self,
        views: Views,
        store: Store,
        gateway: GatewaySettings,
        *,
        service_removal_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`service_removal_delay`: seconds a service no host uses any more is kept at least before it is
        deleted (0: at once, in the publish that left it unused), at most a fifth longer (_REMOVAL_WINDOW)."""
        self._views = views
        self._store = store
        self._gateway = gateway
        self._lock = threading.Lock()
        self.rejected_hosts = 0
        self.last_publish_seconds = 0.0
        # The shared services: the ones each host's last accepted build routes to, and per service how
        # many hosts use it (deleted at 0).
        # A tuple each (each name once; a tuple costs a third of a frozenset, for every host of 100,000),
        # and one service as its bare name (nearly every host: 6 MiB less at 100,000 hosts than 1-tuples,
        # which pays for most of the fingerprints below).
        self._host_services: dict[str, str | tuple[str, ...]] = {}
        self._service_users: dict[str, int] = {}
        # The services no host uses, kept until their removal is due: name -> when (clock) its last host
        # left it, oldest first (each is added when released, so insertion order is time order).
        self._removal_delay = service_removal_delay
        self._clock = clock
        self._unused: dict[str, float] = {}
        # Per host, the fingerprint of the view its objects were last built from (HostRoutes.fingerprint):
        # a host touched but with the same view is not rebuilt (Cloud Controller's first BulkSync maps
        # nearly every host to the processes its DesiredLRP routes already go to: the same view).
        self._built_views: dict[str, int] = {}
        rs = gateway.route_services
        # Route services' internal lookup: a host's routes depend on its route service's host too.
        self._lookup = InternalLookup(views.host_routes, rs.internal_lookup_allowlist) if rs and rs.internal_lookup else None
        internal = self._lookup.is_internal if self._lookup is not None else None
        g = gateway
        self._builds = {
            ViewKind.HOST: _Builds(
                lambda view: build_host_encoded(g, view, internal),  # the common host as bytes; services apart
                lambda host: [(o.kind, o.name) for o in host_object_names(g, host)],
                "route skipped",
                "host",
                gateway.sharded,
            ),
            ViewKind.INTERNAL_HOST: _Builds(
                lambda view: build_internal(g, view),
                lambda host: [(SERVICE_ENTRY, internal_object_name(g, host))],
                "internal route skipped",
                "host",
                False,
            ),
            ViewKind.TCP_PORT: _Builds(
                lambda view: build_tcp(g, view),
                lambda port: [(o.kind, o.name) for o in tcp_object_names(g, port)],
                "tcp route skipped",
                "port",
                True,
            ),
        }
        self._emit(build_router_objects(gateway), [])

    def publish(self, *, everything: bool = False) -> int:
        """Rebuilds what changed since the last call (or everything); returns the number of hosts touched
        (each rebuilt, or left as it is if its view is the one it was built from)."""
        with self._lock, gc_pause.paused():
            started = time.perf_counter()
            dirty = self._views.take_dirty()
            work: list[tuple[ViewKind, _Builds, list[Key]]] = []
            rebuilt = 0
            for kind, builds in self._builds.items():
                keys = dirty[kind]
                if everything:
                    keys = keys | self._views.keys(kind)
                if kind is ViewKind.HOST:
                    if self._lookup is not None:
                        keys = keys | self._lookup.dependents(keys)  # type: ignore[arg-type] - hosts
                    rebuilt = len(keys)
                work.append((kind, builds, sorted(keys)))  # type: ignore[type-var] - one kind's keys are alike
            deletions: list[tuple[Kind, str]] = []
            self._emit(self._built(work, deletions, everything), deletions)
            self.last_publish_seconds = time.perf_counter() - started
            return rebuilt

    def _built(
        self, work: list[tuple[ViewKind, _Builds, list[Key]]], deletions: list[tuple[Kind, str]], everything: bool
    ) -> Iterator[IstioObject | EncodedObject]:
        """The objects of every key in `work`, each key built as its objects are taken, so a full rebuild
        never holds 100k hosts' worth of protobuf messages; what a key no longer has goes to `deletions`,
        which is complete once this is exhausted. A service is built once however many hosts use it,
        and deleted only if no host uses it once every key was rebuilt (a host may take it over). A host
        whose view did not change since its last build is skipped, unless `everything`."""
        services = _PublishServices(everything)
        for kind, builds, keys in work:
            for key in keys:
                yield from self._rebuild(kind, builds, key, deletions, services)
        now = self._clock()
        if self._unused and self._oldest_due_at() <= now:
            # The oldest is due (with its window): every service unused for the whole delay goes with it.
            due = [name for name, since in self._unused.items() if since + self._removal_delay <= now]
            for name in due:
                del self._unused[name]
            deletions.extend(kind_name for name in sorted(due) for kind_name in service_object_names(name))
        for name in sorted(services.released):
            if name in self._service_users:
                continue  # a later host took it over
            if self._removal_delay > 0:
                self._unused[name] = now
            else:
                deletions.extend(service_object_names(name))
        metrics.UNUSED_SERVICES.set(len(self._unused))

    def due(self) -> float | None:
        """Seconds until the next delayed service removal is due (0 if it is), or None if none is waiting."""
        with self._lock:
            if not self._unused:
                return None
            return max(0.0, self._oldest_due_at() - self._clock())

    def _oldest_due_at(self) -> float:
        """When (clock) the oldest unused service's removal is due, its window included (some must wait)."""
        return self._unused[next(iter(self._unused))] + self._removal_delay * (1 + _REMOVAL_WINDOW)

    def _rebuild(
        self, kind: ViewKind, builds: _Builds, key: Key, deletions: list[tuple[Kind, str]], services: _PublishServices
    ) -> list[IstioObject] | list[EncodedObject]:
        view = self._views.view(kind, key)
        fingerprint = None
        if kind is ViewKind.HOST:
            bound = None
            if self._lookup is not None:
                bound = _route_service_urls(view)  # type: ignore[arg-type] - a host's view
                self._lookup.record(key, bound)  # type: ignore[arg-type] - hosts
            if view is None:
                self._built_views.pop(key, None)  # type: ignore[call-overload] - hosts
            elif not bound:  # a host bound to a route service depends on that host's view too (InternalLookup)
                fingerprint = view.fingerprint()  # type: ignore[union-attr] - a host's view
                if not services.everything and self._built_views.get(key) == fingerprint:  # type: ignore[call-overload]
                    return []  # built from this very view: its objects and services are what it would get
        if view is None:
            deletions.extend(builds.owned(key))
            if kind is ViewKind.HOST:
                self._use_services(key, (), services)  # type: ignore[arg-type] - hosts
            return []
        used: tuple[str, ...] = ()
        try:
            built = builds.build(view)
            if isinstance(built, HostParts):
                used = tuple([service.name for service in built.services])  # each once (HostParts)
                built = [*built.objects, *self._services_of(built, services)]  # type: ignore[list-item]
        except ValueError as error:
            # One bad view never blocks the others; what it had before stays served (its services too).
            self.rejected_hosts += 1
            metrics.HOSTS_REJECTED.inc()
            log.warning(builds.skipped, extra={builds.field: key, "error": str(error)})
            if kind is ViewKind.HOST:
                self._built_views.pop(key, None)  # type: ignore[call-overload] - hosts
            return []
        if kind is ViewKind.HOST:
            self._use_services(key, used, services)  # type: ignore[arg-type] - hosts
            if fingerprint is None:
                self._built_views.pop(key, None)  # type: ignore[call-overload] - hosts
            else:
                self._built_views[key] = fingerprint  # type: ignore[index] - hosts
        if builds.partial:  # router shards: a host (or port) may need fewer objects than before, or none
            emitted = {(obj.kind, obj.name) for obj in built}
            deletions.extend(owned for owned in builds.owned(key) if owned not in emitted)
        return built  # type: ignore[return-value]

    def _services_of(self, parts: HostParts, services: _PublishServices) -> list[IstioObject | EncodedObject]:
        """The objects of a host's services not yet emitted in this publish: each is built once per
        publish (a BBS event for an app with many route hosts rebuilds its one service once), and only
        whether it went out is remembered, not its bytes. Raises the ValueError of a service that cannot
        be built, for each host using it (nothing of that host goes out)."""
        fresh: list[IstioObject | EncodedObject] = []
        names = []
        for service in parts.services:
            state = services.done.get(service.name)
            if state is None:
                try:
                    fresh += build_service_encoded(self._gateway, service)
                except ValueError as error:
                    services.done[service.name] = error
                    raise
                names.append(service.name)
            elif state is not True:
                raise state
        for name in names:  # the host is accepted: its fresh services go out with it
            services.done[name] = True
        return fresh

    def _use_services(self, host: str, used: tuple[str, ...], services: _PublishServices) -> None:
        """Records the services a host's accepted build routes to; one no host uses any more is released
        (deleted at the end of the publish unless a later host takes it)."""
        held = self._host_services.get(host, ())
        before = (held,) if isinstance(held, str) else held
        if used == before:
            return
        users = self._service_users
        for name in used:
            if name not in before:
                users[name] = users.get(name, 0) + 1
                self._unused.pop(name, None)  # used again before its removal was due: it stays
        for name in before:
            if name not in used:
                users[name] -= 1
                if not users[name]:
                    del users[name]
                    services.released.add(name)
        if used:
            self._host_services[host] = used[0] if len(used) == 1 else used
        else:
            self._host_services.pop(host, None)

    def _emit(self, upserts: Iterable[IstioObject | EncodedObject], deletions: Iterable[tuple[Kind, str]]) -> None:
        """The one exit of everything published, once per publish: objects to add or replace, built as
        they are taken (the store serializes each as it comes), and (kind, name) to delete, complete once
        `upserts` has been taken."""
        self._store.apply(upserts, deletions)


@dataclass
class _PublishServices:
    """One publish's state: whether it rebuilds every key; per shared service, True once its objects went
    out or the error refusing it; and the services released by their last host."""

    everything: bool = False  # every key rebuilt, even one whose view did not change
    done: dict[str, bool | ValueError] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)


def _route_service_urls(routes: HostRoutes | None) -> list[str]:
    if routes is None:
        return []
    return [d.route_service_url for ds in routes.paths.values() for d in ds if d.route_service_url]
