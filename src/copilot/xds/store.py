"""The store of Istio objects Copilot serves, keyed by (kind, name), with content digests.

The publisher's side: `apply(upserts, deletions)` serializes and encodes each spec once (an
EncodedObject's spec comes serialized: its bytes are taken as they are; the store keeps each as it is
sent, with its digest, never as a protobuf message) and drops what did not change: an upsert with an unchanged digest
and the deletion of an unknown name are no-ops (no new version, no push). Anything else releases a new
immutable `Snapshot` (snapshot.py) to the watchers (the MCP server); an apply with deletions releases one per
step of kinds.REMOVAL_ORDER that changed something, every one but the last a barrier. A caller gathering many objects
for one apply can hand over `serialize(obj)` instead of each object, to hold bytes, not messages, meanwhile.

Readiness lives here: until `release()` is called (Copilot has read its sources) changes are kept but no
snapshot leaves the store, so istiod's streams get no answer rather than an empty world. The store
never calls into the protocol layer except to hand over a snapshot, and the protocol layer never calls
back into the store: it answers from the snapshot it was handed.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from google.protobuf.message import Message

from copilot.istio.kinds import REMOVAL_ORDER, EncodedObject, IstioObject, Kind
from copilot.xds import encoding
from copilot.xds.snapshot import LEAF_MAX, NODE_MAX, KindSnapshot, Leaf, Node, Resource, Snapshot, find, kind_version

Watcher = Callable[[Snapshot], None]
BATCH = 1024  # an apply's upserts serialized outside the lock, then stored under it


class Serialized(NamedTuple):
    """What the store keeps of an IstioObject: its key and the encoded resource with its content digest."""

    kind: Kind
    name: str
    resource: Resource


def serialize(obj: IstioObject | EncodedObject) -> Serialized:
    body = obj.body if isinstance(obj, EncodedObject) else obj.spec.SerializeToString(deterministic=True)
    return Serialized(obj.kind, obj.name, encoding.resource(obj.kind, obj.name, body))


class _KindState:
    """One kind's live resources in the name-ordered tree (snapshot.py). A node or leaf of an older
    generation than the state's may be shared with a released snapshot: a change copies it, never writes it."""

    __slots__ = ("keys", "nodes", "generation", "combined", "count", "changed_at", "released")

    def __init__(self) -> None:
        self.generation = 0
        self.keys = [""]  # the nodes' lower bounds
        self.nodes = [Node(0, [""], [_leaf(0)])]
        self.combined = 0
        self.count = 0
        self.changed_at = 0.0
        self.released: KindSnapshot | None = None  # the last KindSnapshot handed out, while still current

    def _locate(self, name: str) -> tuple[int, Node, int, Leaf]:
        n = find(self.keys, name)
        node = self.nodes[n]
        i = find(node.keys, name)
        return n, node, i, node.leaves[i]

    def _writable(self, n: int, i: int) -> tuple[Node, Leaf]:
        """The node and leaf on the path to a change, copied first if a released snapshot shares them
        (a leaf of the current generation is only ever in a node of the current generation)."""
        node = self.nodes[n]
        if node.generation != self.generation:
            node = self.nodes[n] = Node(self.generation, list(node.keys), list(node.leaves))
        leaf = node.leaves[i]
        if leaf.generation != self.generation:
            leaf = node.leaves[i] = _leaf(self.generation, leaf)
        return node, leaf

    def put(self, name: str, resource: Resource) -> bool:
        # _locate, written out: a full rebuild puts 300,000 resources at 100,000 hosts
        n = bisect_right(self.keys, name) - 1
        node = self.nodes[n]
        i = bisect_right(node.keys, name) - 1
        leaf = node.leaves[i]
        old = leaf.get(name)
        if old is not None and old.digest == resource.digest:
            return False
        if leaf.generation != self.generation:
            node, leaf = self._writable(n, i)
        leaf[name] = resource
        self.combined ^= resource.digest if old is None else resource.digest ^ old.digest
        if old is None:
            self.count += 1
            if len(leaf) > LEAF_MAX:
                self._split_leaf(n, node, i, leaf)
        return True

    def delete(self, name: str) -> bool:
        n, _, i, leaf = self._locate(name)
        old = leaf.get(name)
        if old is None:
            return False
        if leaf.generation != self.generation:
            leaf = self._writable(n, i)[1]
        del leaf[name]  # an emptied leaf stays: the next name in its range goes there
        self.combined ^= old.digest
        self.count -= 1
        return True

    def _split_leaf(self, n: int, node: Node, i: int, leaf: Leaf) -> None:
        names = sorted(leaf)
        half = len(names) // 2
        node.leaves[i : i + 1] = [_leaf(self.generation, {k: leaf[k] for k in part}) for part in (names[:half], names[half:])]
        node.keys.insert(i + 1, names[half])
        if len(node.leaves) > NODE_MAX:
            half = len(node.leaves) // 2
            right = Node(self.generation, node.keys[half:], node.leaves[half:])
            del node.keys[half:], node.leaves[half:]
            self.nodes.insert(n + 1, right)
            self.keys.insert(n + 1, right.keys[0])

    def freeze(self) -> KindSnapshot:
        if self.released is None:
            self.released = KindSnapshot(
                kind_version(self.combined, self.count), self.changed_at, self.count, tuple(self.keys), tuple(self.nodes)
            )
            self.generation += 1  # every node and leaf in it is shared from now on
        return self.released


def _leaf(generation: int, items: Mapping[str, Resource] | None = None) -> Leaf:
    leaf = Leaf(items or ())
    leaf.generation = generation
    return leaf


class Store:
    """Istio objects by (kind, name); `apply()` from the publisher, snapshots out to `watch()`ers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when an apply ends
        self._applying = False
        self._fresh: set[_KindState] = set()  # kinds the running apply created: not in a snapshot before its end
        self._kinds: dict[Kind, _KindState] = {}
        self._watchers: list[Watcher] = []
        self._released = False
        self._serial = 0

    def apply(
        self, upserts: Iterable[IstioObject | EncodedObject | Serialized], deletions: Iterable[tuple[Kind, str]] = ()
    ) -> None:
        """Upserts and deletes objects; releases new snapshots if anything changed (and `release()` was called).
        Deletions go in kinds.REMOVAL_ORDER, one snapshot per kind that lost an object (the upserts go with
        the first); every snapshot but the last is a barrier, so a stream sends them in that order.

        Upserts are serialized as they come, outside the lock, and stored BATCH at a time under it: a full
        rebuild holds no list of every new resource (300,000 at 100,000 hosts, about 150 MiB), and a
        resource it replaces is freed at once unless a released snapshot still holds it (before
        `release()`: always). Nothing of an apply is seen before its end: a snapshot taken meanwhile is
        the one released before it (release() and snapshot() on a store not yet released wait for the
        end), and applies run one at a time. Upserts that raise end the apply with what they gave."""
        with self._lock:
            while self._applying:
                self._idle.wait()
            self._applying = True
        changed: set[_KindState] = set()
        now = time.monotonic()
        batch: list[tuple[Kind, str, Resource]] = []
        add, resource = batch.append, encoding.resource
        try:
            for obj in upserts:
                if type(obj) is EncodedObject:  # serialize(), written out for the common host's objects
                    kind, name, body = obj  # type: ignore[misc] - an EncodedObject
                    add((kind, name, resource(kind, name, body)))
                else:
                    add(obj if isinstance(obj, Serialized) else serialize(obj))  # type: ignore[arg-type]
                if len(batch) == BATCH:
                    self._put(batch, changed)
                    batch = []
                    add = batch.append
            deleted: dict[Kind, list[str]] = {}
            for kind, name in deletions:
                deleted.setdefault(kind, []).append(name)
        except BaseException:
            self._put(batch, changed)
            self._finish(changed, {}, now)  # what was taken goes out as it is, like any other change
            raise
        self._put(batch, changed)
        del batch
        self._finish(changed, deleted, now)

    def _put(self, batch: list[tuple[Kind, str, Resource]], changed: set[_KindState]) -> None:
        """Stores a batch of an apply's upserts; `changed` collects the kinds that changed."""
        with self._lock:
            last, state = None, None
            for kind, name, resource in batch:
                if kind is not last:
                    last, state = kind, self._state(kind)
                if state.put(name, resource):  # type: ignore[union-attr] - set with `last`
                    changed.add(state)  # type: ignore[arg-type]

    def _finish(self, upserted: set[_KindState], deleted: dict[Kind, list[str]], now: float) -> None:
        """An apply's deletions, step by step, and its snapshots; ends the apply."""
        with self._lock:
            try:
                self._fresh.clear()
                snapshots: list[Snapshot] = []
                order = REMOVAL_ORDER + tuple(kind for kind in deleted if kind not in REMOVAL_ORDER)
                for step, kind in enumerate(order):
                    changed = set(upserted) if step == 0 else set()
                    state = self._kinds.get(kind)
                    if state is not None:
                        for name in deleted.get(kind, ()):
                            if state.delete(name):
                                changed.add(state)
                    if not changed:
                        continue
                    for state in changed:
                        state.changed_at = now
                        state.released = None
                    if self._released:
                        snapshots.append(self._snapshot())
                for snapshot in snapshots[:-1]:
                    snapshot.barrier = True
                watchers = list(self._watchers) if snapshots else []
            finally:
                self._applying = False
                self._idle.notify_all()
        for snapshot in snapshots:
            for watcher in watchers:
                watcher(snapshot)

    def release(self) -> None:
        """Opens the store: hands its current snapshot to the watchers now and every later one as it comes.
        Called once Copilot's sources have been read; later calls do nothing."""
        with self._lock:
            while self._applying and not self._released:
                self._idle.wait()  # until then its kinds may be half written (and never frozen)
            if self._released:
                return
            self._released = True
            snapshot, watchers = self._snapshot(), list(self._watchers)
        for watcher in watchers:
            watcher(snapshot)

    @property
    def released(self) -> bool:
        """True once `release()` was called: istiod is being served."""
        return self._released

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Calls `watcher(snapshot)` after every released change (at once, if already released); returns
        an unsubscribe. Watchers run on the applying thread: they must only hand the snapshot on. Two
        snapshots may reach a watcher out of order; `Snapshot.serial` says which is newer."""
        with self._lock:
            self._watchers.append(watcher)
            snapshot = self._snapshot() if self._released else None
        if snapshot is not None:
            watcher(snapshot)

        def unsubscribe() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return unsubscribe

    def snapshot(self) -> Snapshot:
        """The current state as a snapshot, released or not (for tests, benchmarks and debugging)."""
        with self._lock:
            while self._applying and not self._released:
                self._idle.wait()  # as release()
            return self._snapshot()

    # Reads of the current state, for tests and debugging.
    def names(self, kind: Kind) -> list[str]:
        return self.snapshot().resources(kind.collection).names()

    def version(self, kind: Kind) -> str:
        return self.snapshot().version(kind.collection)

    def get(self, kind: Kind, name: str) -> Message | None:
        """The spec held under (kind, name), decoded again; None if there is none."""
        resource = self.snapshot().resources(kind.collection).get(name)
        return None if resource is None else kind.message.FromString(resource.body)

    def _state(self, kind: Kind) -> _KindState:
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _KindState()
            if self._applying:
                self._fresh.add(state)
        return state

    def _snapshot(self) -> Snapshot:
        """The state as a snapshot; during an apply of a released store, the one before it: every kind's
        last frozen version (an apply changes a kind's tree but not its `released` until its end), and
        none of the kinds it created."""
        self._serial += 1
        return Snapshot(
            self._serial,
            {kind.collection: state.freeze() for kind, state in self._kinds.items() if state not in self._fresh},
        )
