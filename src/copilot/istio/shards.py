"""Router shards: which routers serve which routes, by isolation segment (gorouter's
`router.routing_table_sharding_mode` and `router.isolation_segments`).

Each shard is a set of routers (the istio-router job's `router_shard` names it; the routers carry it as
the SHARD_LABEL node label) and a rule over a route destination's isolation segment ("" = shared):
`all` accepts every destination, `segments` those whose segment is listed, `shared-and-segments` the
shared ones and those whose segment is listed. As in gorouter the rule applies per destination (per
registration), never per host.

istiod serves a router one HTTPS server per host and port: a router selected by two Gateways with the
same hosts on 443 loses the second one's server ("duplicate host names"). So each shard has its own
Gateway selecting its routers only (gateway.selector plus SHARD_LABEL), and a router belongs to exactly
one shard. The default configuration, one shard `all`, keeps the Gateway as it always was: selected by
gateway.selector alone, named gateway.name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MODES = ("all", "segments", "shared-and-segments")
SHARD_LABEL = "routing.cloudfoundry.org/shard"
DEFAULT_SHARD_NAME = "all"
# A label value (the routers' SHARD_LABEL), short enough to suffix object names with.
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,38}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class RouterShard:
    """One shard: its name, gorouter's sharding mode and the isolation segments it serves."""

    name: str = DEFAULT_SHARD_NAME
    mode: str = "all"
    isolation_segments: tuple[str, ...] = ()
    # The address this shard's Gateway listeners bind ("" = gateway.bind): routers of several shards
    # on one machine (the local tier) each bind their own.
    bind: str = ""

    def accepts(self, isolation_segment: str) -> bool:
        """Whether this shard's routers route a destination in `isolation_segment` ("" = shared)."""
        if self.mode == "all":
            return True
        if not isolation_segment:
            return self.mode == "shared-and-segments"
        return isolation_segment in self.isolation_segments

    @property
    def serves_tcp(self) -> bool:
        """TCP router ports have no isolation segment (tcp-router has none): shards that route shared
        destinations serve them, `segments` shards do not."""
        return self.mode != "segments"


DEFAULT_SHARDS = (RouterShard(),)


def suffix(shard: RouterShard) -> str:
    """A DNS-1123 piece naming a shard's objects: the name lower-cased, `_` and `.` as `-`, plus a short
    hash when that changed anything (so `a_b` and `a-b` never share objects)."""
    readable = re.sub(r"[^a-z0-9-]", "-", shard.name.lower()).strip("-")
    if readable == shard.name:
        return readable
    return f"{readable}-{hashlib.sha256(shard.name.encode()).hexdigest()[:6]}"
