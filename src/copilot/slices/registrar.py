"""The route registrars' slice: platform routes (api, uaa, ...) registered by route_registrar jobs, each
with its expiry. Every change records the hosts it touched. Writers are the registrar API's threads
and its expiry thread; copilot.views reads with `lock` held.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Set

from copilot.model import Registration
from copilot.slices.bbs import NOTHING


class RegistrarSlice:
    """Registrations and their expiry (monotonic seconds); thread-safe; records the hosts touched."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._registrations: dict[Registration, float] = {}
        self._by_host: dict[str, set[Registration]] = defaultdict(set)
        self._touched: set[str] = set()

    def register(self, registration: Registration, expires_at: float) -> None:
        with self.lock:
            if registration not in self._registrations:
                self._by_host[registration.host].add(registration)
                self._touched.add(registration.host)
            self._registrations[registration] = expires_at

    def unregister(self, registration: Registration) -> None:
        with self.lock:
            if self._registrations.pop(registration, None) is not None:
                self._drop(registration)

    def expire(self, now: float) -> int:
        """Drops registrations whose expiry passed; returns how many."""
        with self.lock:
            expired = [r for r, expires_at in self._registrations.items() if expires_at <= now]
            for registration in expired:
                del self._registrations[registration]
                self._drop(registration)
            return len(expired)

    def registrations(self) -> list[Registration]:
        with self.lock:
            return sorted(self._registrations)

    def take_touched(self) -> Set[str]:
        """The hosts touched since the last call (the caller's to keep)."""
        with self.lock:
            if not self._touched:
                return NOTHING
            touched, self._touched = self._touched, set()
            return touched

    def hosts(self) -> set[str]:
        with self.lock:
            return set(self._by_host)

    def of_host(self, host: str) -> list[Registration]:
        """A host's registrations, sorted (call with `lock` held)."""
        return sorted(self._by_host.get(host, ()))

    def _drop(self, registration: Registration) -> None:
        hosts = self._by_host[registration.host]
        hosts.discard(registration)
        if not hosts:
            del self._by_host[registration.host]
        self._touched.add(registration.host)
