"""gc_pause: the cyclic collector paused while Copilot takes in or builds a whole state, nesting across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from copilot import gc_pause


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


def test_a_pause_stops_the_collector_until_it_ends() -> None:
    gc.enable()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_runs_again_only_when_the_last_of_overlapping_pauses_ends() -> None:
    """The publisher's thread and a BulkSync's may pause at once, one ending before the other."""
    gc.enable()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait()
        with gc_pause.paused():
            second_in.set()
            first_out.wait()
            seen.append(gc.isenabled())  # the first pause is over, this one is not

    thread = threading.Thread(target=second)
    thread.start()
    with gc_pause.paused():
        first_in.set()
        second_in.wait()
    first_out.set()
    thread.join()
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with gc_pause.paused():
        pass
    assert not gc.isenabled()


def test_the_collector_runs_again_when_the_paused_work_raises() -> None:
    gc.enable()
    with pytest.raises(ValueError), gc_pause.paused():
        raise ValueError("refused")
    assert gc.isenabled()
