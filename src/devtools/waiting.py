"""The one way tests, benchmarks and the dev tooling wait for a condition: poll it against a deadline.

`poll` answers whether the condition came true in time; `wait_until` raises an AssertionError naming what
it waited for. A predicate that raises OSError (connection refused or reset, and every requests error,
which derive from it) counts as "not yet"; the last such error is reported on timeout. The interval only
paces the polling: nothing here sleeps for a fixed time in place of a condition."""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 15.0
DEFAULT_INTERVAL = 0.02
Predicate = Callable[[], object]


def _poll(
    predicate: Predicate, timeout: float, interval: float, ignoring: tuple[type[Exception], ...]
) -> tuple[bool, Exception | None]:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return True, last_error
        except ignoring as error:
            last_error = error
        if time.monotonic() >= deadline:
            return False, last_error
        time.sleep(interval)


def poll(
    predicate: Predicate,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    ignoring: tuple[type[Exception], ...] = (OSError,),
) -> bool:
    """Whether `predicate` returned truthy within `timeout` seconds (it is always tried at least once)."""
    return _poll(predicate, timeout, interval, ignoring)[0]


def wait_until(
    predicate: Predicate,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str = "condition",
    ignoring: tuple[type[Exception], ...] = (OSError,),
) -> None:
    """Polls `predicate` until it returns truthy; raises AssertionError naming `message` after `timeout`."""
    done, last_error = _poll(predicate, timeout, interval, ignoring)
    if not done:
        raise AssertionError(
            f"timed out after {timeout}s waiting for {message}" + (f" (last error: {last_error})" if last_error else "")
        )
