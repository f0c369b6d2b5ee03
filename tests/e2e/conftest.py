"""The tier the end-to-end tests share: the release's rendered jobs (Copilot, a real istiod, a real Envoy
router with its SDS server) started by the one launcher, the BBS double, and a v58 cell."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from devtools.tier import Tier, start_tier

_names = itertools.count(1)


@pytest.fixture(scope="session")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier(tmp_path_factory.mktemp("tier"))
    yield tier
    try:
        # Every object Copilot sent, istiod turned into config the router accepted: no NACK all session.
        assert tier.envoy.rejected_updates() == {}
    finally:
        tier.stop()


@pytest.fixture
def apps() -> Iterator[list]:
    """Things to stop after the test (cell instances, sample apps): `apps.append(x)`; each has stop()."""
    started: list = []
    yield started
    for app in started:
        app.stop()


@pytest.fixture
def unique() -> str:
    """A short unique name, so each test uses its own hosts and process guids on the shared tier."""
    return f"t{next(_names)}"
