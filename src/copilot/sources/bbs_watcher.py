"""Keeps the routing table's BBS slice current: subscribe to events, list everything, apply each event,
reconcile with a full listing periodically and after every reconnect. BBS unreachable: keep serving
what we have, retry with backoff, report staleness."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from copilot import metrics
from copilot.protos import bbs_pb2
from copilot.routing_table import InstanceKey, RoutingTable
from copilot.sources import bbs_translate
from copilot.sources.bbs_client import BBSClient, BBSError, Event, EventStream, MalformedEvent

log = logging.getLogger(__name__)


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
        self.synced = threading.Event()
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

    def staleness(self) -> float:
        """0 while the event stream is up; else seconds since it went down (or since start)."""
        if self._live:
            return 0.0
        since = self._confirmed_at if self._confirmed_at is not None else self._started_at
        return time.monotonic() - since

    # ---- the event loop: subscribe, list, apply events; on failure back off and start over
    def _run_events(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                stream = self._client.open_events()
                self._stream = stream
                self.sync()
                self._live = True
                log.info("subscribed to BBS events")
                backoff = 0.5
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
            finally:
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
                if self._live:  # only a stream that was listed and live confirmed our state until now
                    self._confirmed_at = time.monotonic()
                    self._live = False
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _run_reconcile(self) -> None:
        while not self._stop.wait(self._reconcile_interval):
            if self._stream is None:
                continue
            try:
                self.sync()
            except BBSError as error:
                metrics.BBS_ERRORS.labels("reconcile").inc()
                log.warning("BBS reconcile failed; reconnecting", extra={"error": str(error)})
                stream = self._stream
                if stream is not None:
                    stream.close()

    def sync(self) -> None:
        """Lists BBS and makes the table match; retried if events landed while listing."""
        for _ in range(3):
            seen = self._events_applied
            desired = self._client.desired_lrp_routing_infos()
            actual = self._client.actual_lrps()
            with self._lock:
                if self._events_applied != seen:
                    continue
                self._table.replace_bbs_state(*_translate_listing(desired, actual))
                break
        else:
            with self._lock:
                self._table.replace_bbs_state(*_translate_listing(desired, actual))
        self._confirmed_at = time.monotonic()
        metrics.BBS_SYNCS.inc()
        self.synced.set()
        self._on_change()

    # ---- events
    def _apply(self, item: Event | MalformedEvent) -> None:
        if isinstance(item, MalformedEvent):
            metrics.BBS_ERRORS.labels("malformed_event").inc()
            log.warning("BBS event skipped", extra={"error": str(item)})
            return
        with self._lock:
            self._events_applied += 1
            apply_event(self._table, item)
        metrics.BBS_EVENTS.labels(item.type).inc()
        self._on_change()


def apply_event(table: RoutingTable, event: Event) -> None:
    """Applies one decoded BBS event to the routing table."""
    message = event.message
    if event.type in ("desired_lrp_created", "desired_lrp_removed"):
        desired = message.desired_lrp
        if event.type == "desired_lrp_created":
            table.upsert_process(desired.process_guid, bbs_translate.process_routes(desired))
        else:
            table.remove_process(desired.process_guid)
    elif event.type == "desired_lrp_changed":
        table.upsert_process(message.after.process_guid, bbs_translate.process_routes(message.after))
    elif event.type == "actual_lrp_instance_created":
        table.upsert_instance(message.actual_lrp.presence, bbs_translate.instance(message.actual_lrp))
    elif event.type == "actual_lrp_instance_changed":
        key = message.actual_lrp_key
        if message.before.presence != message.after.presence:
            table.remove_instance(key.process_guid, key.index, message.before.presence)
        table.upsert_instance(
            message.after.presence, bbs_translate.instance_from_info(key, message.actual_lrp_instance_key, message.after)
        )
    elif event.type == "actual_lrp_instance_removed":
        key = message.actual_lrp.actual_lrp_key
        table.remove_instance(key.process_guid, key.index, message.actual_lrp.presence)
    # actual_lrp_crashed carries no routing change of its own: a changed event accompanies it.


def _translate_listing(desired: list[bbs_pb2.DesiredLRP], actual: list[bbs_pb2.ActualLRP]):
    processes = {lrp.process_guid: bbs_translate.process_routes(lrp) for lrp in desired}
    instances: dict[str, dict[InstanceKey, object]] = defaultdict(dict)
    for lrp in actual:
        instances[lrp.actual_lrp_key.process_guid][(lrp.actual_lrp_key.index, lrp.presence)] = bbs_translate.instance(lrp)
    return processes, dict(instances)
