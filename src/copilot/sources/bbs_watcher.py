"""Keeps the routing table's BBS slice current: subscribe to events, list everything, apply each event,
reconcile with a full listing periodically and after every reconnect. BBS unreachable: keep serving
what we have, retry with backoff, report staleness.

Nothing BBS sends can stop the watcher: any exception in subscribing, listing, reading or applying
an event ends the current stream; the loop backs off, resubscribes and re-lists. `live` (and so the
health endpoint's `bbs_synced`) is true only while a listed stream is up.

Events are applied the way route-emitter applies them, tolerating the real BBS's sequences and its
lack of ordering: a removed event only removes the entry if it is the same instance (a crash with a
quick restart sends the new UNCLAIMED instance before the removal of the old one); a new instance
that does not serve yet (UNCLAIMED, CLAIMED) does not displace a serving one at its index; and an
instance that starts EVACUATING replaces its own ORDINARY entry (the evacuating copy serves until
removed, the replacement once it runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from copilot import metrics
from copilot.model import Instance
from copilot.protos import bbs_pb2
from copilot.routing_table import InstanceKey, RoutingTable
from copilot.sources import bbs_translate
from copilot.sources.bbs_client import BBSClient, BBSError, Event, EventStream, MalformedEvent

log = logging.getLogger(__name__)

ORDINARY = bbs_pb2.ActualLRP.ORDINARY
EVACUATING = bbs_pb2.ActualLRP.EVACUATING

# The instance behind each table entry, keyed (process guid, index, presence): its guid and whether
# it serves. Events about one instance never remove another one that took its place, and a new
# instance that does not serve yet never displaces a serving one (route-emitter keys endpoints by
# instance guid; the table keys them by index and presence).
InstanceGuids = dict[tuple[str, int, int], tuple[str, bool]]

_MIN_BACKOFF = 0.5


class BBSWatcher:
    def __init__(
        self,
        client: BBSClient,
        table: RoutingTable,
        on_change: Callable[[], None],
        *,
        reconcile_interval: float = 30.0,
        max_backoff: float = 10.0,
    ) -> None:
        self._client = client
        self._table = table
        self._on_change = on_change
        self._reconcile_interval = reconcile_interval
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one of {full sync, event application} at a time
        self._events_applied = 0
        self._stream: EventStream | None = None
        self._confirmed_at: float | None = None  # monotonic time BBS last confirmed our state; None = never
        self._live = False  # subscribed and listed: the event stream keeps our state confirmed
        self._started_at = time.monotonic()
        self._guids: InstanceGuids = {}
        self._malformed_seen: set[tuple[str, str]] = set()
        self.synced = threading.Event()  # set once the first full listing is applied (and never cleared)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._run_events, "bbs-events"), (self._run_reconcile, "bbs-reconcile")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._client.close()

    @property
    def live(self) -> bool:
        """True while an event stream is up and was followed by a full listing: our state is current."""
        return self._live

    def staleness(self) -> float:
        """0 while the event stream is up; else seconds since it went down (or since start)."""
        if self._live:
            return 0.0
        since = self._confirmed_at if self._confirmed_at is not None else self._started_at
        return time.monotonic() - since

    # ---- the event loop: subscribe, list, apply events; on failure back off and start over
    def _run_events(self) -> None:
        backoff = min(_MIN_BACKOFF, self._max_backoff)
        while not self._stop.is_set():
            try:
                stream = self._client.open_events()
                self._stream = stream
                self.sync()
                self._live = True
                log.info("subscribed to BBS events")
                backoff = min(_MIN_BACKOFF, self._max_backoff)
                for item in stream:
                    if self._stop.is_set():
                        break
                    self._apply(item)
                if not self._stop.is_set():
                    raise BBSError("BBS closed the event stream")
            except BBSError as error:
                if self._stop.is_set():
                    break
                metrics.BBS_ERRORS.labels("connection").inc()
                log.warning("BBS unavailable; serving last known routes", extra={"error": str(error), "retry_in": backoff})
            except Exception as error:  # a bug or a payload nobody foresaw: never fatal, start over from a listing
                if self._stop.is_set():
                    break
                metrics.BBS_ERRORS.labels("internal").inc()
                log.error(
                    "BBS watcher failed; resubscribing and re-listing, serving last known routes",
                    extra={"error": f"{type(error).__name__}: {error}", "retry_in": backoff},
                    exc_info=True,
                )
            finally:
                self._end_stream()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing is best effort; the loop must go on
                log.debug("closing the BBS event stream failed", exc_info=True)
        if self._live:  # only a stream that was listed and live confirmed our state until now
            self._confirmed_at = time.monotonic()
            self._live = False

    def _run_reconcile(self) -> None:
        while not self._stop.wait(self._reconcile_interval):
            if self._stream is None:
                continue
            try:
                self.sync()
            except Exception as error:  # BBSError or anything else: the event loop resubscribes and re-lists
                metrics.BBS_ERRORS.labels("reconcile").inc()
                log.warning("BBS reconcile failed; reconnecting", extra={"error": f"{type(error).__name__}: {error}"})
                stream = self._stream
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:  # noqa: BLE001
                        log.debug("closing the BBS event stream failed", exc_info=True)

    def sync(self) -> None:
        """Lists BBS and makes the table match; retried if events landed while listing."""
        for _ in range(3):
            seen = self._events_applied
            desired = self._client.desired_lrp_routing_infos()
            actual = self._client.actual_lrps()
            with self._lock:
                if self._events_applied != seen:
                    continue
                self._replace(desired, actual)
                break
        else:
            with self._lock:
                self._replace(desired, actual)
        self._confirmed_at = time.monotonic()
        metrics.BBS_SYNCS.inc()
        self.synced.set()
        self._on_change()

    def _replace(self, desired: list[bbs_pb2.DesiredLRP], actual: list[bbs_pb2.ActualLRP]) -> None:
        processes, instances, guids = translate_listing(desired, actual)
        self._table.replace_bbs_state(processes, instances)
        self._guids = guids

    # ---- events
    def _apply(self, item: Event | MalformedEvent) -> None:
        if isinstance(item, MalformedEvent):
            metrics.BBS_ERRORS.labels("malformed_event").inc()
            key = (item.event_type[:100], item.reason)
            if key not in self._malformed_seen and len(self._malformed_seen) < 1024:
                self._malformed_seen.add(key)
                log.warning(
                    "BBS event skipped (reported once per event type and problem)",
                    extra={"event_type": key[0], "problem": item.reason, "error": str(item)},
                )
            else:
                log.debug("BBS event skipped", extra={"error": str(item)})
            return
        with self._lock:
            self._events_applied += 1
            apply_event(self._table, item, self._guids)
        metrics.BBS_EVENTS.labels(item.type).inc()
        self._on_change()


def apply_event(table: RoutingTable, event: Event, guids: InstanceGuids | None = None) -> None:
    """Applies one decoded BBS event to the routing table; `guids` tracks which instance is behind each entry."""
    guids = {} if guids is None else guids
    message = event.message
    if event.type == "desired_lrp_created":
        desired = message.desired_lrp
        table.upsert_process(desired.process_guid, bbs_translate.process_routes(desired))
    elif event.type == "desired_lrp_removed":
        process_guid = message.desired_lrp.process_guid
        table.remove_process(process_guid)  # its instances go with it
        for entry in [entry for entry in guids if entry[0] == process_guid]:
            del guids[entry]
    elif event.type == "desired_lrp_changed":
        table.upsert_process(message.after.process_guid, bbs_translate.process_routes(message.after))
    elif event.type == "actual_lrp_instance_created":
        lrp = message.actual_lrp
        _upsert(table, guids, lrp.presence, bbs_translate.instance(lrp))
    elif event.type == "actual_lrp_instance_changed":
        key, instance_key = message.actual_lrp_key, message.actual_lrp_instance_key
        if message.before.presence != message.after.presence:
            _remove(table, guids, key.process_guid, key.index, message.before.presence, instance_key.instance_guid)
        _upsert(table, guids, message.after.presence, bbs_translate.instance_from_info(key, instance_key, message.after))
    elif event.type == "actual_lrp_instance_removed":
        lrp = message.actual_lrp
        key = lrp.actual_lrp_key
        _remove(table, guids, key.process_guid, key.index, lrp.presence, lrp.actual_lrp_instance_key.instance_guid)
    # actual_lrp_crashed carries no routing change of its own: the created/removed (quick restart) or
    # changed (to CRASHED) events that come with it do.


def _upsert(table: RoutingTable, guids: InstanceGuids, presence: int, instance: Instance) -> None:
    entry = (instance.process_guid, instance.index, presence)
    if presence == EVACUATING and instance.instance_guid:
        # route-emitter unregisters the ORDINARY entry of an instance that starts evacuating
        _remove(table, guids, instance.process_guid, instance.index, ORDINARY, instance.instance_guid, only_if_same=True)
    stored = guids.get(entry)
    if stored is not None and stored[0] != instance.instance_guid and stored[1] and not instance.serving:
        # a replacement not running yet: the serving instance keeps its place until it is removed
        return
    table.upsert_instance(presence, instance)
    guids[entry] = (instance.instance_guid, instance.serving)


def _remove(
    table: RoutingTable,
    guids: InstanceGuids,
    process_guid: str,
    index: int,
    presence: int,
    instance_guid: str,
    *,
    only_if_same: bool = False,
) -> None:
    """Removes the entry if it is `instance_guid`'s (or, unless `only_if_same`, if we do not know whose it is)."""
    entry = (process_guid, index, presence)
    if entry in guids:
        if guids[entry][0] != instance_guid:
            return  # another instance took this place (e.g. the UNCLAIMED one of a quick restart)
        del guids[entry]
    elif only_if_same:
        return
    table.remove_instance(process_guid, index, presence)


def translate_listing(
    desired: list[bbs_pb2.DesiredLRP], actual: list[bbs_pb2.ActualLRP]
) -> tuple[dict, dict[str, dict[InstanceKey, Instance]], InstanceGuids]:
    """A full listing as the table's BBS slice: processes, instances, and the guid behind each entry."""
    processes = {lrp.process_guid: bbs_translate.process_routes(lrp) for lrp in desired}
    instances: dict[str, dict[InstanceKey, Instance]] = defaultdict(dict)
    guids: InstanceGuids = {}
    for lrp in actual:
        key = lrp.actual_lrp_key
        instance = bbs_translate.instance(lrp)
        instances[key.process_guid][(key.index, lrp.presence)] = instance
        guids[(key.process_guid, key.index, lrp.presence)] = (instance.instance_guid, instance.serving)
    for (process_guid, index, presence), (guid, _) in list(guids.items()):
        ordinary = (process_guid, index, ORDINARY)
        if presence == EVACUATING and guid and guids.get(ordinary, ("",))[0] == guid:
            del instances[process_guid][(index, ORDINARY)]
            del guids[ordinary]
    return processes, dict(instances), guids
