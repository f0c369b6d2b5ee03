"""Internal lookup of route services (gorouter's router.route_services_internal_lookup): whether a
route service URL names a route of this foundation, so the routers' route-service proxy hands the
signed request to its own router instead of sending it out through DNS and the load balancer.

As gorouter: the URL's host and path must be a route of the views (copilot.views) (an exact host before its
`*.` wildcard, and a context path covering the URL's path), and, when the allowlist is not empty, the
host must be on it (an FQDN, or `*.domain` for one more label; CVE-2019-3789). A route's decision
depends on another host's routes, so this module also remembers which hosts' route services name which
hosts: when one of those changes, the hosts bound to it are rebuilt too (`dependents`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from copilot.model import HostRoutes


def _parent_wildcard(host: str) -> str:
    return "*." + host.split(".", 1)[1] if "." in host else ""


def allowlisted(host: str, allowlist: tuple[str, ...]) -> bool:
    """gorouter's allowlist: empty allows every host; `*.domain` one label under domain."""
    return not allowlist or host in allowlist or (_parent_wildcard(host) in allowlist)


def _covers(routes: HostRoutes, path: str) -> bool:
    return any(not p or path == p or path.startswith(p + "/") for p in routes.paths)


class InternalLookup:
    """Decides per route service URL and tracks which hosts depend on which route service hosts."""

    def __init__(self, host_routes: Callable[[str], HostRoutes | None], allowlist: tuple[str, ...] = ()) -> None:
        self._host_routes = host_routes
        self._allowlist = allowlist
        self._lock = threading.Lock()
        self._uses: dict[str, set[str]] = {}  # host -> the keys (route service hosts, their wildcard) it looked up
        self._used_by: dict[str, set[str]] = defaultdict(set)

    def is_internal(self, url: str) -> bool:
        """Whether `url` (a route service URL) is a route of this foundation the allowlist lets through."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host or not allowlisted(host, self._allowlist):
            return False
        for candidate in (host, _parent_wildcard(host)):
            routes = self._host_routes(candidate) if candidate else None
            if routes is not None:
                return _covers(routes, parts.path or "/")
        return False

    def record(self, host: str, urls: Iterable[str]) -> None:
        """The route service URLs of `host` as just built (none: it depends on no other host)."""
        keys = set()
        for url in urls:
            service = (urlsplit(url).hostname or "").lower()
            if service:
                keys |= {service, _parent_wildcard(service)} - {""}
        with self._lock:
            for key in self._uses.pop(host, set()):
                self._used_by[key].discard(host)
                if not self._used_by[key]:
                    del self._used_by[key]
            if keys:
                self._uses[host] = keys
                for key in keys:
                    self._used_by[key].add(host)

    def dependents(self, changed: Iterable[str]) -> set[str]:
        """The hosts whose route service is one of the `changed` hosts (or under a changed wildcard)."""
        with self._lock:
            return {user for host in changed for user in self._used_by.get(host, ())}
