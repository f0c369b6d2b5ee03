"""The tier the end-to-end tests share: BBS double, Copilot, a real istiod and a real Envoy router."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from devtools.apps import AppInstance
from devtools.tier import Tier, start_tier

_names = itertools.count(1)


@pytest.fixture(scope="session")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    workdir = tmp_path_factory.mktemp("tier")
    tier = start_tier(workdir, reconcile_interval=5)
    yield tier
    tier.stop()


@pytest.fixture
def apps() -> Iterator[list[AppInstance]]:
    """Start app instances with `apps.append(AppInstance(guid))`; all are stopped after the test."""
    started: list[AppInstance] = []
    yield started
    for app in started:
        app.stop()


@pytest.fixture
def unique() -> str:
    """A short unique name, so each test uses its own hosts and process guids on the shared tier."""
    return f"t{next(_names)}"
