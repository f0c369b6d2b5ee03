"""Fixtures for the ops-file tests: interpolations of cf-deployment v58 with our ops-files, made once."""

from __future__ import annotations

import pytest
from opsfile_helpers import BOSH_LITE, CF, ENABLE, ENABLE_LITE, STAGE1, cf_data_available, interpolate

from devtools import peers


def pytest_collection_modifyitems(items):
    if not cf_data_available():
        skip = pytest.mark.skip(reason=f"cf-deployment data files not found at {CF.parent}")
        for item in items:
            if "opsfiles" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bosh_cli():
    return peers.bosh()


@pytest.fixture(scope="session")
def base(bosh_cli) -> dict:
    return interpolate(CF)


@pytest.fixture(scope="session")
def enabled(bosh_cli) -> dict:
    return interpolate(CF, ENABLE)


@pytest.fixture(scope="session")
def lite(bosh_cli) -> dict:
    return interpolate(CF, BOSH_LITE, ENABLE, ENABLE_LITE)


@pytest.fixture(scope="session")
def lite_without_companion(bosh_cli) -> dict:
    return interpolate(CF, BOSH_LITE, ENABLE)


@pytest.fixture(scope="session")
def stage1(bosh_cli) -> dict:
    return interpolate(CF, STAGE1)


@pytest.fixture(scope="session", params=["enabled", "lite", "lite_without_companion"])
def result(request) -> dict:
    """Every cf-deployment + enable-istio-routing combination that must satisfy the issue's checks."""
    return request.getfixturevalue(request.param)
