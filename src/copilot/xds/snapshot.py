"""Versioned per-type resource sets (MCP Resources wrapped in Any), updated incrementally.

Each resource's version is a digest of its content; a type's version combines the digests of its
resources (order-independent XOR), so versions change only when content changes and two Copilots
holding the same state report the same versions. Resources are kept pre-encoded as
DiscoveryResponse `resources` fields, so a full-state response is a byte join, not a re-serialization.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from copilot.xds.wire import length_delimited

MCP_RESOURCE_TYPE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
RESOURCES_FIELD = 2  # DiscoveryResponse.resources
_MCP_TYPE_FIELD = length_delimited(1, MCP_RESOURCE_TYPE.encode())


@dataclass(frozen=True)
class Entry:
    digest: int
    encoded: bytes  # a complete `resources` field of a DiscoveryResponse


def encode_resource(name: str, body: Message) -> Entry:
    """Wraps a spec in an MCP Resource whose metadata.version is its content digest.

    The envelope (Any{Resource{Metadata, Any{spec}}}) is written field by field: it is the hot path of
    a full rebuild, and building four messages only to serialize them costs more than the spec itself.
    """
    body_bytes = body.SerializeToString(deterministic=True)
    type_field, full_name = _spec_type_field(body.DESCRIPTOR.full_name)
    name_bytes = name.encode()
    digest = hashlib.blake2b(name_bytes + b"\0" + full_name + b"\0" + body_bytes, digest_size=16)
    metadata = length_delimited(1, name_bytes) + length_delimited(3, digest.hexdigest().encode())  # Metadata{name, version}
    spec = type_field + length_delimited(2, body_bytes)  # Any{type_url, value}
    resource = length_delimited(1, metadata) + length_delimited(2, spec)  # Resource{metadata, body}
    wrapped = _MCP_TYPE_FIELD + length_delimited(2, resource)  # Any{type_url, value}
    return Entry(int.from_bytes(digest.digest(), "big"), length_delimited(RESOURCES_FIELD, wrapped))


@functools.cache
def _spec_type_field(full_name: str) -> tuple[bytes, bytes]:
    return length_delimited(1, f"type.googleapis.com/{full_name}".encode()), full_name.encode()


class _TypeState:
    __slots__ = ("entries", "combined")

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.combined = 0

    @property
    def version(self) -> str:
        return f"{self.combined:032x}-{len(self.entries)}"


@dataclass(frozen=True)
class TypeView:
    """A consistent read of one type: its version, its encoded resources and when it last changed."""

    version: str
    encoded: list[bytes]
    changed_at: float


class Snapshot:
    """The resources Copilot serves, by type URL; notifies listeners after every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, _TypeState] = {}
        self._changed_at: dict[str, float] = {}
        self._listeners: list[Callable[[set[str]], None]] = []

    def apply(self, updates: Iterable[tuple[str, str, Entry | None]]) -> set[str]:
        """Applies (type_url, name, entry-or-None-to-delete) updates; returns the type URLs whose version changed."""
        changed: set[str] = set()
        now = time.monotonic()
        with self._lock:
            for type_url, name, entry in updates:
                state = self._types.setdefault(type_url, _TypeState())
                old = state.entries.get(name)
                if entry is None:
                    if old is None:
                        continue
                    del state.entries[name]
                    state.combined ^= old.digest
                else:
                    if old is not None and old.digest == entry.digest:
                        continue
                    if old is not None:
                        state.combined ^= old.digest
                    state.entries[name] = entry
                    state.combined ^= entry.digest
                changed.add(type_url)
            for type_url in changed:
                self._changed_at[type_url] = now
            listeners = list(self._listeners)
        if changed:
            for listener in listeners:
                listener(changed)
        return changed

    def view(self, type_url: str) -> TypeView:
        with self._lock:
            state = self._types.get(type_url)
            if state is None:
                return TypeView(_TypeState().version, [], 0.0)
            return TypeView(state.version, [e.encoded for e in state.entries.values()], self._changed_at.get(type_url, 0.0))

    def version(self, type_url: str) -> str:
        with self._lock:
            state = self._types.get(type_url)
            return state.version if state else _TypeState().version

    def names(self, type_url: str) -> list[str]:
        with self._lock:
            state = self._types.get(type_url)
            return sorted(state.entries) if state else []

    def subscribe(self, listener: Callable[[set[str]], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe
