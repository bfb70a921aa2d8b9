"""PostgreSQL tier: needs VMMGR_TEST_PG_URL (scripts/pg-test-up.sh prints it; `make test`
exports it). Without it these tests skip, or fail under CI (see tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _needs_postgres(pg_url: str) -> None:
    """Gate every postgres-tier test on a configured server."""
