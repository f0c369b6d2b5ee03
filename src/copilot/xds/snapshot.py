"""Immutable, versioned snapshots of the Istio objects Copilot serves: what the store hands the MCP server.

A `Snapshot` holds, per type URL, a `KindSnapshot`: the kind's resources (name -> `Resource`: content
digest and the encoded MCP resource, no protobuf message objects), its version and when it last changed.
Nothing in a snapshot changes after the store released it, so stream threads answer from the one they
hold without locks and without calling back into the store.

A kind's version combines its resources' digests (order-independent XOR, plus the count): it changes
only when content changes, and two Copilots holding the same state report the same versions.

Resources sit in a two-level tree ordered by name: nodes of up to `NODE_MAX` leaves, leaves of up to
`LEAF_MAX` resources (split in two when they outgrow it). Releasing a snapshot after a change copies
only the path the change touched (the root's node list, one node, one leaf), never the whole kind: at
100,000 hosts a BBS event copies a few hundred references, not a 100,000-entry dict. Name order also
keeps a response's resources in the order a full rebuild made them (the publisher builds hosts in name
order), so the byte join of 100,000 resources reads memory in sequence rather than at random.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence

LEAF_MAX = 64  # resources in a leaf before it splits
NODE_MAX = 64  # leaves in a node before it splits


class Leaf(dict):
    """Resources by name, all at or above the leaf's lower bound (`Node.keys`). `generation`: the store's
    write generation the leaf belongs to (older ones are shared with a released snapshot: read only)."""

    __slots__ = ("generation",)


class Node:
    """Up to NODE_MAX leaves in name order; `keys[i]` is the lowest name leaf i holds ("" for the first)."""

    __slots__ = ("generation", "keys", "leaves")

    def __init__(self, generation: int, keys: list[str], leaves: list[Leaf]) -> None:
        self.generation = generation
        self.keys = keys
        self.leaves = leaves


def find(keys: Sequence[str], name: str) -> int:
    """The index of the child whose range holds `name` (keys are the children's lower bounds, keys[0] = "")."""
    return bisect.bisect_right(keys, name) - 1


class Resource:
    """One object as it is sent: its content digest and its encoded `resources` field (xds.encoding),
    whose last bytes, from `body_at`, are the serialized spec."""

    __slots__ = ("digest", "encoded", "body_at")

    def __init__(self, digest: int, encoded: bytes, body_at: int) -> None:
        self.digest = digest
        self.encoded = encoded
        self.body_at = body_at

    @property
    def body(self) -> bytes:
        return self.encoded[self.body_at :]


def kind_version(combined: int, count: int) -> str:
    return f"{combined:032x}-{count}"


EMPTY_VERSION = kind_version(0, 0)


class KindSnapshot:
    """One kind at one version: its resources (read-only), and when it last changed (time.monotonic();
    0.0 if it never did). Plain slots rather than a frozen dataclass: one is made per change."""

    __slots__ = ("version", "changed_at", "count", "keys", "nodes")

    def __init__(
        self,
        version: str = EMPTY_VERSION,
        changed_at: float = 0.0,
        count: int = 0,
        keys: tuple[str, ...] = ("",),
        nodes: tuple[Node, ...] = (Node(0, [""], [Leaf()]),),
    ) -> None:
        self.version = version
        self.changed_at = changed_at
        self.count = count
        self.keys = keys  # the nodes' lower bounds
        self.nodes = nodes

    def items(self) -> Iterator[tuple[str, Resource]]:
        for node in self.nodes:
            for leaf in node.leaves:
                yield from leaf.items()

    def encoded(self) -> list[bytes]:
        """Every resource's encoded `resources` field (xds.encoding), by leaf in name order."""
        return [r.encoded for node in self.nodes for leaf in node.leaves for r in leaf.values()]

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.items())

    def get(self, name: str) -> Resource | None:
        node = self.nodes[find(self.keys, name)]
        return node.leaves[find(node.keys, name)].get(name)


_NOTHING = KindSnapshot()


class Snapshot:
    """Every kind at one moment, by type URL (Kind.collection). `serial` grows with each snapshot the store makes.
    `barrier`: a stream must send this snapshot's changes before it folds in a later one (the store sets it on
    every step of an apply but the last, so removals reach istiod in kinds.REMOVAL_ORDER)."""

    __slots__ = ("serial", "kinds", "barrier")

    def __init__(self, serial: int, kinds: Mapping[str, KindSnapshot], barrier: bool = False) -> None:
        self.serial = serial
        self.kinds = kinds
        self.barrier = barrier

    def resources(self, type_url: str) -> KindSnapshot:
        """The kind istiod asks for by `type_url`; an empty one for a type Copilot holds none of."""
        return self.kinds.get(type_url, _NOTHING)

    def version(self, type_url: str) -> str:
        return self.resources(type_url).version
