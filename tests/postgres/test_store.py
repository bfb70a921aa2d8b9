"""The store test-suite (tests/unit/test_state_*.py) run against a real PostgreSQL.

The same test functions are imported here and the ``backend`` fixture is overridden, so every
store test runs on both backends without being written twice. Needs env VMMGR_TEST_PG_URL
(a SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1:55432/vmmgr_test); skipped
without it, failed without it when env CI is set. Each test session works in its own fresh
schema (dropped at the end) and every test starts from empty tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "unit"))

from state_fixtures import *  # noqa: E402, F403
from test_state_claims import *  # noqa: E402, F403
from test_state_db import *  # noqa: E402, F403
from test_state_migrations import *  # noqa: E402, F403
from test_state_misc import *  # noqa: E402, F403
from test_state_prepared import *  # noqa: E402, F403
from test_state_rows import *  # noqa: E402, F403
from test_state_snapshot import *  # noqa: E402, F403
from test_state_vms import *  # noqa: E402, F403

pytestmark = pytest.mark.postgres


@pytest.fixture
def backend() -> str:
    return "postgres"
