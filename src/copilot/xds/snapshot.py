"""Immutable, versioned snapshots of the Istio objects Copilot serves: what the store hands the MCP server.

A `Snapshot` holds, per type URL, a `KindSnapshot`: the kind's resources (name -> `Resource`: content
digest and the encoded MCP resource, no protobuf message objects), its version and when it last changed.
Nothing in a snapshot changes after the store released it, so stream threads answer from the one they
hold without locks and without calling back into the store.

A kind's version combines its resources' digests (order-independent XOR, plus the count): it changes
only when content changes, and two Copilots holding the same state report the same versions.

Resources sit in a fixed two-level tree of buckets (`FANOUT` x `FANOUT` leaves, by a stable hash of the
name), so that releasing a new snapshot after a change copies only the path the change touched (one
inner node of `FANOUT` references, one leaf of a few entries), never the whole kind: at 100,000 hosts a
BBS event copies about a hundred references, not a 100,000-entry dict.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence

FANOUT = 64  # inner nodes per kind, and leaves per inner node


def bucket_of(name: str) -> tuple[int, int]:
    """(inner node, leaf) of a resource name: stable across processes (unlike `hash`), so response order is too."""
    return divmod(zlib.crc32(name.encode()) % (FANOUT * FANOUT), FANOUT)


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
Tree = tuple[Sequence[Mapping[str, Resource]], ...]  # FANOUT inner nodes of FANOUT leaves


class KindSnapshot:
    """One kind at one version: its resources (read-only), and when it last changed (time.monotonic();
    0.0 if it never did). Plain slots rather than a frozen dataclass: one is made per change."""

    __slots__ = ("version", "changed_at", "count", "tree")

    def __init__(self, version: str = EMPTY_VERSION, changed_at: float = 0.0, count: int = 0, tree: Tree = ()) -> None:
        self.version = version
        self.changed_at = changed_at
        self.count = count
        self.tree = tree

    def items(self) -> Iterator[tuple[str, Resource]]:
        for node in self.tree:
            for leaf in node:
                yield from leaf.items()

    def encoded(self) -> list[bytes]:
        """Every resource's encoded `resources` field (xds.encoding), in tree order."""
        return [r.encoded for node in self.tree for leaf in node for r in leaf.values()]

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.items())

    def get(self, name: str) -> Resource | None:
        if not self.tree:
            return None
        node, leaf = bucket_of(name)
        return self.tree[node][leaf].get(name)


_NOTHING = KindSnapshot()


class Snapshot:
    """Every kind at one moment, by type URL (Kind.collection). `serial` grows with each snapshot the store makes."""

    __slots__ = ("serial", "kinds")

    def __init__(self, serial: int, kinds: Mapping[str, KindSnapshot]) -> None:
        self.serial = serial
        self.kinds = kinds

    def resources(self, type_url: str) -> KindSnapshot:
        """The kind istiod asks for by `type_url`; an empty one for a type Copilot holds none of."""
        return self.kinds.get(type_url, _NOTHING)

    def version(self, type_url: str) -> str:
        return self.resources(type_url).version
