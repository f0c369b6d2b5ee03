"""Fixtures for the ops-file tests: interpolations of cf-deployment v58 with our ops-files, made once."""

from __future__ import annotations

import pytest
from opsfile_helpers import (
    BOSH_LITE,
    CF,
    CF_OPS,
    ENABLE,
    ENABLE_LITE,
    ISO_SEG_ROUTER,
    PXC_PROXY_ROUTE,
    STAGE1,
    cf_data_available,
    interpolate,
)

from devtools import peers


@pytest.fixture(autouse=True)
def _cf_data():
    """These tests need cf-deployment v58 and its ops-files in ../shared/data: without them they FAIL
    (a skipped ops-file test would read as a pass)."""
    if not cf_data_available():
        pytest.fail(f"cf-deployment v58 data not found at {CF.parent} (cf-deployment-v58.0.0.yml, "
                    "cf-deployment-v58.0.0-bosh-lite.yml, ops-v58/)", pytrace=False)


@pytest.fixture(scope="session")
def bosh_cli():
    return peers.bosh()


@pytest.fixture(scope="session")
def base(bosh_cli) -> dict:
    return interpolate(CF)


@pytest.fixture(scope="session")
def enabled(bosh_cli) -> dict:
    return interpolate(CF, ENABLE, PXC_PROXY_ROUTE)


@pytest.fixture(scope="session")
def lite(bosh_cli) -> dict:
    return interpolate(CF, BOSH_LITE, ENABLE, ENABLE_LITE, PXC_PROXY_ROUTE)


@pytest.fixture(scope="session")
def lite_without_companion(bosh_cli) -> dict:
    return interpolate(CF, BOSH_LITE, ENABLE, PXC_PROXY_ROUTE)


@pytest.fixture(scope="session")
def stage1(bosh_cli) -> dict:
    return interpolate(CF, STAGE1)


@pytest.fixture(scope="session")
def isolation_segment(bosh_cli) -> dict:
    """With cf-deployment's isolation segment router and our companion for it."""
    iso = CF_OPS / "add-persistent-isolation-segment-router.yml"
    return interpolate(CF, iso, ENABLE, ISO_SEG_ROUTER, PXC_PROXY_ROUTE)


@pytest.fixture(scope="session", params=["enabled", "lite", "lite_without_companion", "isolation_segment"])
def result(request) -> dict:
    """Every cf-deployment + enable-istio-routing combination that must satisfy the issue's checks."""
    return request.getfixturevalue(request.param)
