"""Keeps the BBS slice (copilot.slices.bbs) current: subscribe to events, list everything, apply each event,
reconcile with a full listing periodically and after every reconnect. BBS unreachable: keep serving
what we have, retry with backoff, report staleness. Events never wait for a listing (seconds to take
and translate at 100,000 routes): those applied meanwhile are applied again on top of it.

Nothing BBS sends can stop the watcher: any exception in subscribing, listing, reading or applying
an event ends the current stream; the loop backs off, resubscribes and re-lists. `live` (and so the
health endpoint's `bbs_synced`) is true only while a listed stream is up.

A hung BBS: the event stream has no read timeout, since a real BBS sends nothing on an idle stream
(no heartbeats), so silence proves nothing either way. While a stream is up the watcher pings BBS
every `liveness_interval` seconds; a ping not answered within that time (or a failed reconcile) makes
the stream suspect: it is closed and the loop resubscribes and re-lists, and staleness counts from
the last time BBS answered (a ping, a listing or an event), rising for as long as BBS stays hung.

A peer that lost its state: a full listing that would withdraw most routes (more than
`WithdrawalGuard.fraction` of the serving instances or of the desired LRPs Copilot knows, and at least
`minimum` of them) is held, not applied: the slice keeps what it has, events keep being applied, the
hold is reported (`copilot_bbs_withdrawal_held`, a warning, `withdrawal_held`), and the reconcile
lists again when the hold ends. A listing that still withdraws most routes after `hold_seconds` is
applied; one that no longer does (BBS got its state back) is applied at once and ends the hold.
Events are never held: a real mass stop reaches Copilot as one removed event per instance or desired
LRP, each an explicit statement by BBS, while a BBS that lost its state sends no event about what it
lost; only a listing can withdraw by absence, so only listings are guarded (docs/operating.md).

Events are applied the way route-emitter applies them, tolerating the real BBS's sequences and its
lack of ordering. An event is about one instance (process guid, index, instance guid, presence: the
slice's key) and never touches another at the same index: a crash with a quick restart sends
the new UNCLAIMED instance before the removal of the old one, and two instances at one index both
serve until each one's own removal. An instance that starts EVACUATING replaces its own ORDINARY
entry (the evacuating copy serves until removed, the replacement once it runs).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from copilot import gc_pause, metrics
from copilot.model import Instance, ProcessRoutes
from copilot.protos import bbs_pb2
from copilot.settings import BBSConfig
from copilot.slices.bbs import BbsSlice, InstanceKey, instance_key
from copilot.sources import bbs_translate
from copilot.sources.bbs_client import BBSClient, BBSError, Event, EventStream, MalformedEvent

log = logging.getLogger(__name__)

ORDINARY = bbs_pb2.ActualLRP.ORDINARY
EVACUATING = bbs_pb2.ActualLRP.EVACUATING

_MIN_BACKOFF = 0.5


@dataclass(frozen=True)
class WithdrawalGuard:
    """Which full listings are held instead of applied: those withdrawing more than `fraction` of the
    serving instances (or of the desired LRPs) Copilot knows, and at least `minimum` of them; applied
    once they have persisted for `hold_seconds` (0: never held)."""

    fraction: float
    minimum: int
    hold_seconds: float

    def is_mass(self, withdrawn: int, known: int) -> bool:
        return self.hold_seconds > 0 and withdrawn >= self.minimum and withdrawn > self.fraction * known


@dataclass(frozen=True)
class Withdrawal:
    """What a listing would withdraw: serving instances and desired LRPs, and how many are known."""

    instances: int
    known_instances: int
    processes: int
    known_processes: int

    def log_fields(self) -> dict[str, int]:
        return {
            "instances_withdrawn": self.instances,
            "instances_known": self.known_instances,
            "desired_lrps_withdrawn": self.processes,
            "desired_lrps_known": self.known_processes,
        }


@dataclass(frozen=True)
class _Hold:
    since: float  # monotonic time the first such listing was held
    until: float  # monotonic time from which such a listing is applied
    withdrawal: Withdrawal  # what the latest held listing would withdraw


class BBSWatcher:
    def __init__(
        self,
        client: BBSClient,
        bbs: BbsSlice,
        on_change: Callable[[], None],
        settings: BBSConfig,
    ) -> None:
        """`settings`: the config's `bbs` section, whose reconcile interval, backoff, liveness interval
        and withdrawal hold the watcher follows (their defaults live there)."""
        self._client = client
        self._bbs = bbs
        self._on_change = on_change
        self._reconcile_interval = settings.reconcile_interval_seconds
        self._max_backoff = settings.max_backoff_seconds
        self._liveness_interval = settings.liveness_check_interval_seconds
        self._guard = WithdrawalGuard(
            settings.withdrawal_hold_fraction, settings.withdrawal_hold_minimum, settings.withdrawal_hold_seconds
        )
        self._stop = threading.Event()
        self._wake = threading.Event()  # the reconcile loop recomputes when it lists next (a hold began, stop)
        self._lock = threading.Lock()  # one of {a listing's application, an event's} at a time
        # While a listing is taken: the events applied since it was asked for, to apply again on top of it.
        self._since_listing: list[Event] | None = None
        self._listing = threading.Lock()  # one listing at a time (the event loop's first, the reconcile's)
        self._stream: EventStream | None = None
        self._confirmed_at: float | None = None  # monotonic time BBS last confirmed our state; None = never
        self._heard_at: float | None = None  # monotonic time BBS last answered (listing, ping, event)
        self._live = False  # subscribed and listed: the event stream keeps our state confirmed
        self._suspect = False  # Copilot is ending the live stream: BBS stopped answering
        self._started_at = time.monotonic()
        self._process_guids: set[str] = set()  # desired LRPs in the slice
        self._hold: _Hold | None = None
        self._malformed_seen: set[tuple[str, str]] = set()
        self.synced = threading.Event()  # set once the first full listing is applied (and never cleared)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in (
            (self._run_events, "bbs-events"),
            (self._run_reconcile, "bbs-reconcile"),
            (self._run_liveness, "bbs-liveness"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
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
        """0 while the event stream is up and BBS answers; else seconds since BBS last confirmed our state
        (the stream went down, or for a hung BBS its last answer), or since start."""
        if self._live and not self._suspect:
            return 0.0
        since = self._heard_at if self._live else self._confirmed_at
        return time.monotonic() - (since if since is not None else self._started_at)

    @property
    def withdrawal_held(self) -> bool:
        """True while a listing that would withdraw most routes is held (the module docstring)."""
        return self._hold is not None

    def held_withdrawal(self) -> dict[str, float] | None:
        """The hold, for status pages: what the latest held listing would withdraw, for how long it has
        been held, and in how many seconds it is applied if BBS still lists that; None without a hold."""
        hold = self._hold
        if hold is None:
            return None
        held_for = time.monotonic() - hold.since
        return {
            **hold.withdrawal.log_fields(),
            "held_seconds": round(held_for, 3),
            "applied_in_seconds": round(max(0.0, hold.until - time.monotonic()), 3),
        }

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
                    raise BBSError("BBS stopped answering; stream ended" if self._suspect else "BBS closed the event stream")
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
            _close(stream)
        if self._live:
            # A stream that ended by itself confirmed our state until now; one Copilot ended because BBS
            # stopped answering confirmed it only until BBS last answered.
            heard = self._heard_at if self._suspect else None
            self._confirmed_at = heard if heard is not None else time.monotonic()
            self._live = False
        self._suspect = False

    def _give_up_on(self, stream: EventStream) -> None:
        """BBS stopped answering: end its stream (the event loop then resubscribes and re-lists)."""
        if self._stream is stream and not self._stop.is_set():
            self._suspect = True
            _close(stream)

    def _run_reconcile(self) -> None:
        next_listing = time.monotonic() + self._reconcile_interval
        while not self._stop.is_set():
            due = next_listing
            hold = self._hold
            if hold is not None:  # list again when the hold ends: apply the withdrawal if it persists
                due = min(due, hold.until)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            if time.monotonic() < due:
                continue  # woken to recompute (a hold began)
            next_listing = time.monotonic() + self._reconcile_interval
            stream = self._stream
            if stream is None:
                continue
            try:
                self.sync()
            except Exception as error:  # BBSError or anything else: the event loop resubscribes and re-lists
                metrics.BBS_ERRORS.labels("reconcile").inc()
                log.warning("BBS reconcile failed; reconnecting", extra={"error": f"{type(error).__name__}: {error}"})
                self._give_up_on(stream)

    def _run_liveness(self) -> None:
        """Pings BBS while a stream is up: the stream alone cannot tell a hung BBS from a quiet one."""
        while not self._stop.wait(self._liveness_interval):
            stream = self._stream
            if stream is None or not self._live:
                continue
            try:
                problem = None if self._client.ping(timeout=self._liveness_interval) else "BBS says it is not available"
            except Exception as error:  # noqa: BLE001 - BBSError, or anything else: BBS did not answer as it should
                problem = f"{type(error).__name__}: {error}"
            if self._stream is not stream:
                continue
            if problem is None:
                self._heard_at = time.monotonic()
                continue
            metrics.BBS_ERRORS.labels("liveness").inc()
            heard = self._heard_at
            log.warning(
                "BBS did not answer a ping; its event stream may be hung: resubscribing, serving last known routes",
                extra={"error": problem, "last_answer_seconds_ago": round(time.monotonic() - heard, 3) if heard else None},
            )
            self._give_up_on(stream)

    def sync(self) -> bool:
        """Lists BBS and makes the slice match, unless the listing is held (a mass withdrawal: the module
        docstring). Returns whether the listing was applied. Events keep being applied while BBS is
        listed and the listing translated (seconds at 100,000 routes, which no event waits for); those
        are applied again on top of the listing, in order, so none is undone by a listing taken before
        it (each event states its LRP's whole state, so one the listing already holds changes nothing)."""
        with self._listing:
            with self._lock:
                self._since_listing = []
            try:
                with gc_pause.paused():  # a listing: 300,000 objects at 100,000 routes, which the slice keeps
                    desired = self._client.desired_lrp_routing_infos()
                    actual = self._client.actual_lrps()
                    processes, instances = translate_listing(desired, actual)
                    with self._lock:
                        later, self._since_listing = self._since_listing, None
                        applied = self._replace(processes, instances, later or [])
            finally:
                with self._lock:
                    self._since_listing = None
        self._confirmed_at = self._heard_at = time.monotonic()
        self.synced.set()
        if applied:
            metrics.BBS_SYNCS.inc()
            self._on_change()
        return applied

    def _replace(self, processes: dict, instances: dict[str, dict[InstanceKey, Instance]], later: list[Event]) -> bool:
        """The slice made what a translated listing says, then the events applied since it was asked for
        applied again (call with the lock held)."""
        if self._held(self._withdrawal(processes, instances, *_introduced(later))):
            return False
        self._bbs.replace(processes, instances)
        self._process_guids = set(processes)
        for event in later:
            self._apply_locked(event)
        return True

    # ---- the withdrawal guard (call with the lock held)
    def _withdrawal(
        self,
        processes: dict,
        instances: dict[str, dict[InstanceKey, Instance]],
        new_processes: AbstractSet[str] = frozenset(),
        new_instances: AbstractSet[str] = frozenset(),
    ) -> Withdrawal:
        """What the listing would withdraw; what events applied while it was taken brought in (`new_...`)
        the listing may predate, so it does not count."""
        serving = self._bbs.serving_instance_guids()
        listed = {i.instance_guid for by_key in instances.values() for i in by_key.values() if i.serving and i.instance_guid}
        return Withdrawal(
            instances=len(serving - listed - new_instances),
            known_instances=len(serving),
            processes=len(self._process_guids - processes.keys() - new_processes),
            known_processes=len(self._process_guids),
        )

    def _held(self, withdrawal: Withdrawal) -> bool:
        """Whether this listing is held rather than applied; starts, keeps or ends the hold."""
        guard, hold, now = self._guard, self._hold, time.monotonic()
        mass = guard.is_mass(withdrawal.instances, withdrawal.known_instances) or guard.is_mass(
            withdrawal.processes, withdrawal.known_processes
        )
        if not mass:
            if hold is not None:
                self._end_hold("cleared")
                log.warning(
                    "BBS lists most routes again; the held withdrawal is dropped",
                    extra={"held_seconds": round(now - hold.since, 3), **withdrawal.log_fields()},
                )
            return False
        if hold is None:
            self._hold = _Hold(now, now + guard.hold_seconds, withdrawal)
            metrics.BBS_WITHDRAWAL_HELD.set(1)
            metrics.BBS_WITHDRAWAL_HOLDS.labels("held").inc()
            log.warning(
                "BBS listing would withdraw most routes (did BBS lose its state?); held, serving the last known "
                "routes, applied if BBS still lists that after the hold",
                extra={"hold_seconds": guard.hold_seconds, **withdrawal.log_fields()},
            )
            self._wake.set()  # the reconcile lists again when the hold ends
            return True
        if now < hold.until:
            self._hold = dataclasses.replace(hold, withdrawal=withdrawal)
            log.debug("BBS listing still withdraws most routes; held", extra=withdrawal.log_fields())
            return True
        self._end_hold("applied")
        log.warning(
            "BBS listing withdrew most routes for longer than the hold; applied",
            extra={"held_seconds": round(now - hold.since, 3), **withdrawal.log_fields()},
        )
        return False

    def _end_hold(self, outcome: str) -> None:
        self._hold = None
        metrics.BBS_WITHDRAWAL_HELD.set(0)
        metrics.BBS_WITHDRAWAL_HOLDS.labels(outcome).inc()

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
            self._apply_locked(item)
            if self._since_listing is not None:
                self._since_listing.append(item)  # applied again on top of the listing being taken
        self._heard_at = time.monotonic()
        metrics.BBS_EVENTS.labels(item.type).inc()
        self._on_change()

    def _apply_locked(self, item: Event) -> None:
        apply_event(self._bbs, item)
        if item.type in ("desired_lrp_created", "desired_lrp_changed", "desired_lrp_removed"):
            desired = item.message.after if item.type == "desired_lrp_changed" else item.message.desired_lrp
            if item.type == "desired_lrp_removed":
                self._process_guids.discard(desired.process_guid)
            else:
                self._process_guids.add(desired.process_guid)


def _introduced(events: list[Event]) -> tuple[set[str], set[str]]:
    """The process guids and instance guids that `events` created or changed."""
    processes: set[str] = set()
    instances: set[str] = set()
    for event in events:
        message = event.message
        if event.type == "desired_lrp_created":
            processes.add(message.desired_lrp.process_guid)
        elif event.type == "desired_lrp_changed":
            processes.add(message.after.process_guid)
        elif event.type == "actual_lrp_instance_created":
            instances.add(message.actual_lrp.actual_lrp_instance_key.instance_guid)
        elif event.type == "actual_lrp_instance_changed":
            instances.add(message.actual_lrp_instance_key.instance_guid)
    return processes, instances


def _close(stream: EventStream) -> None:
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - closing is best effort; the loop must go on
        log.debug("closing the BBS event stream failed", exc_info=True)


def apply_event(bbs: BbsSlice, event: Event) -> None:
    """Applies one decoded BBS event to the BBS slice."""
    message = event.message
    if event.type == "desired_lrp_created":
        desired = message.desired_lrp
        bbs.upsert_process(desired.process_guid, bbs_translate.process_routes(desired))
    elif event.type == "desired_lrp_removed":
        bbs.remove_process(message.desired_lrp.process_guid)  # its instances go with it
    elif event.type == "desired_lrp_changed":
        bbs.upsert_process(message.after.process_guid, bbs_translate.process_routes(message.after))
    elif event.type == "actual_lrp_instance_created":
        lrp = message.actual_lrp
        instance = bbs_translate.instance(lrp)
        if lrp.presence == EVACUATING and instance.instance_guid:
            # route-emitter unregisters the ORDINARY entry of an instance that starts evacuating
            bbs.remove_instance(instance.process_guid, instance.index, ORDINARY, instance.instance_guid)
        bbs.upsert_instance(lrp.presence, instance)
    elif event.type == "actual_lrp_instance_changed":
        key, instance_key = message.actual_lrp_key, message.actual_lrp_instance_key
        if message.before.presence != message.after.presence:
            bbs.remove_instance(key.process_guid, key.index, message.before.presence, instance_key.instance_guid)
        bbs.upsert_instance(message.after.presence, bbs_translate.instance_from_info(key, instance_key, message.after))
    elif event.type == "actual_lrp_instance_removed":
        lrp = message.actual_lrp
        key = lrp.actual_lrp_key
        bbs.remove_instance(key.process_guid, key.index, lrp.presence, lrp.actual_lrp_instance_key.instance_guid)
    # actual_lrp_crashed carries no routing change of its own: the created/removed (quick restart) or
    # changed (to CRASHED) events that come with it do.


def translate_listing(
    desired: list[bbs_pb2.DesiredLRP], actual: list[bbs_pb2.ActualLRP]
) -> tuple[dict[str, ProcessRoutes], dict[str, dict[InstanceKey, Instance]]]:
    """A full listing as the BBS slice: processes, and instances by `instance_key`."""
    processes = {lrp.process_guid: bbs_translate.process_routes(lrp) for lrp in desired}
    instances: dict[str, dict[InstanceKey, Instance]] = defaultdict(dict)
    for lrp in actual:
        instance = bbs_translate.instance(lrp)
        instances[instance.process_guid][instance_key(lrp.presence, instance)] = instance
    for by_key in instances.values():
        # An instance listed ORDINARY and EVACUATING (a listing in the middle of an evacuation) is its
        # evacuating copy, as after the events.
        for index, guid, presence in list(by_key):
            if presence == EVACUATING and guid:
                by_key.pop((index, guid, ORDINARY), None)
    return processes, dict(instances)
