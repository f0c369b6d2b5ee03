"""Python's cyclic garbage collector paused while Copilot takes in or builds a whole state: `paused()`.

A full rebuild, a BBS listing or a BulkSync at 100,000 routes allocates millions of objects, short-lived ones
(messages, bytes) that reference counting frees and long-lived ones (the slice's routes, the stored
resources); every 700 allocations start a collection, and those of the oldest generation walk the whole
heap (every view, instance and stored resource) to find nothing: 1.8 s of the first BulkSync at
100,000 routes, a fifth of a full rebuild. Cycles made meanwhile, by any thread, are collected as usual
once the last pause is over. Pauses nest across threads (the publisher's thread and Cloud
Controller's): the collector runs again when the last one ends, and only if it ran before the first.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0  # pauses in progress
_resume = False  # whether the collector ran when the first of them began


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
