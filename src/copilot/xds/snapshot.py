"""Immutable, versioned snapshots of the Istio objects Copilot serves: what the store hands the MCP server.

A `Snapshot` holds, per type URL, a `KindSnapshot`: the kind's resources (name -> `Resource`: content
digest and serialized spec bytes, no protobuf message objects), its version and when it last changed.
Nothing in a snapshot changes after the store released it, so stream threads answer from the one they
hold without locks and without calling back into the store.

A kind's version combines its resources' digests (order-independent XOR, plus the count): it changes
only when content changes, and two Copilots holding the same state report the same versions.
Resources sit in `SHARDS` fixed buckets (by a stable hash of the name) so that the store copies only
the buckets a change touched before it releases the next snapshot, not the whole kind: at 100,000
hosts one BBS event copies a few hundred entries, not a 100,000-entry dict.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from copilot.istio.kinds import Kind

SHARDS = 256


def shard_of(name: str) -> int:
    """The bucket a resource name lives in: stable across processes (unlike `hash`), so response order is too."""
    return zlib.crc32(name.encode()) % SHARDS


class Resource:
    """One serialized object: its content digest and spec bytes. `envelope` is the MCP envelope around
    the spec, filled in by xds.encoding the first time the resource is sent (once per content)."""

    __slots__ = ("digest", "body", "envelope")

    def __init__(self, digest: int, body: bytes) -> None:
        self.digest = digest
        self.body = body
        self.envelope: bytes | None = None


def kind_version(combined: int, count: int) -> str:
    return f"{combined:032x}-{count}"


EMPTY_VERSION = kind_version(0, 0)


@dataclass(frozen=True)
class KindSnapshot:
    """One kind at one version: its resources in their buckets (read-only), and when it last changed
    (time.monotonic(); 0.0 if it never did)."""

    kind: Kind | None
    version: str = EMPTY_VERSION
    changed_at: float = 0.0
    count: int = 0
    shards: tuple[Mapping[str, Resource], ...] = field(default=(), repr=False)

    def items(self) -> Iterator[tuple[str, Resource]]:
        for shard in self.shards:
            yield from shard.items()

    def names(self) -> list[str]:
        return sorted(name for shard in self.shards for name in shard)

    def get(self, name: str) -> Resource | None:
        return self.shards[shard_of(name)].get(name) if self.shards else None


_NOTHING = KindSnapshot(None)


@dataclass(frozen=True)
class Snapshot:
    """Every kind at one moment. `serial` grows with each snapshot the store releases."""

    serial: int
    kinds: Mapping[str, KindSnapshot]  # by type URL (Kind.collection)

    def resources(self, type_url: str) -> KindSnapshot:
        """The kind istiod asks for by `type_url`; an empty one for a type Copilot holds none of."""
        return self.kinds.get(type_url, _NOTHING)

    def version(self, type_url: str) -> str:
        return self.resources(type_url).version
