"""The slices' reverse indexes (host -> process guids, CC process -> route guids, ...): `GuidIndex`.

Nearly every key of a foundation has one guid under it (one process per host, one route per CC
process), so a key holds its guid as a bare string and a set only once it has a second: a set of one
costs 216 bytes, and the slices keep four such indexes of 100,000 keys each at 100,000 routes (about
80 MiB of one-element sets). A key whose last guid goes is removed.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class GuidIndex(Generic[K]):
    """key -> the guids under it (no order); not thread-safe (the owning slice's lock guards it)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[K, str | set[str]] = {}

    def add(self, key: K, guid: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = guid
        elif isinstance(entry, str):
            if entry != guid:
                self._entries[key] = {entry, guid}
        else:
            entry.add(guid)

    def discard(self, key: K, guid: str) -> None:
        """Drops `guid` from under `key`, and the key once nothing is left."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if isinstance(entry, str):
            if entry == guid:
                del self._entries[key]
            return
        entry.discard(guid)
        if len(entry) == 1:  # a set holds two or more: back to a bare guid
            self._entries[key] = next(iter(entry))

    def get(self, key: K) -> Collection[str]:
        """The guids under `key` (empty if none); the caller must not change it, nor keep it past the lock."""
        entry = self._entries.get(key)
        if entry is None:
            return ()
        return (entry,) if isinstance(entry, str) else entry

    def keys(self) -> set[K]:
        """Every key with a guid under it (a copy)."""
        return set(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
