"""Bad input is contained to itself: the source that meets it drops the one item (an instance, a port
mapping, a route entry, an endpoint) and routes the rest. Each offending item is counted in
`copilot_invalid_input_total{source,field}` and logged once, when first seen, not again on every
reconcile or relisting that sees it unchanged. The memory of what was seen is bounded (the most
recent `MEMORY` items); an item forgotten and seen again is reported again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from copilot import metrics

MEMORY = 4096
INVALID_INPUT = metrics.INVALID_INPUT  # copilot_invalid_input_total, defined with Copilot's other metrics

_lock = threading.Lock()
_seen: OrderedDict[tuple[str, str, Hashable], None] = OrderedDict()


def first_sight(source: str, field: str, item: Hashable) -> bool:
    """Counts a dropped item the first time it is seen and says whether it should be logged.

    `item` identifies the offending item and its bad value (e.g. process guid, index, instance guid,
    the value), so the same item with another bad value is a new one."""
    key = (source, field, item)
    with _lock:
        if key in _seen:
            _seen.move_to_end(key)
            return False
        _seen[key] = None
        if len(_seen) > MEMORY:
            _seen.popitem(last=False)
    INVALID_INPUT.labels(source, field).inc()
    return True


def forget() -> None:
    """Forgets every item seen (for tests that report the same item in separate cases)."""
    with _lock:
        _seen.clear()
