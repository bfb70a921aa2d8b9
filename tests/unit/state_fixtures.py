"""Store fixtures shared by the store test-suite (tests/unit/test_state_*.py) and its Postgres
run (tests/postgres/test_store.py, which re-collects the same tests with ``backend`` =
"postgres").

SQLite: the schema is migrated once per session into a template file; each test gets a copy.
Postgres (env VMMGR_TEST_PG_URL, through the ``pg_url`` fixture of tests/conftest.py): one
fresh schema per session, migrated once; every test starts from truncated tables; the schema
is dropped at the end. Without the env var Postgres tests skip, unless env CI is set (then
they fail).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from vmmgr.state import Store, open_store
from vmmgr.state.models import Host, metadata

# what test modules star-import: the fixtures
__all__ = ["backend", "empty_db_url", "host", "state_pg_store", "state_sqlite_template", "store"]


def pg_url_or_skip(request: pytest.FixtureRequest) -> str:
    """The ``pg_url`` fixture of tests/conftest.py: skips without VMMGR_TEST_PG_URL, fails
    under CI."""
    url: str = request.getfixturevalue("pg_url")
    return url


def pg_url_with_schema(url: str, schema: str) -> str:
    u = make_url(url)
    u = u.update_query_dict({"options": f"-csearch_path={schema}"})
    return u.render_as_string(hide_password=False)


class PgSchema:
    """A throw-away schema in the test database; the store sees it as its whole world."""

    def __init__(self, url: str) -> None:
        self.admin = create_engine(url)
        self.name = f"vmmgr_t_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = pg_url_with_schema(url, self.name)

    def drop(self) -> None:
        with self.admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
        self.admin.dispose()


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="session")
def state_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("state-template")
    open_store(None, d).close()
    return d / "vmmgr.db"


@pytest.fixture(scope="session")
def state_pg_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    schema = PgSchema(pg_url_or_skip(request))
    store = open_store(schema.url, Path("/nonexistent"))
    try:
        yield store
    finally:
        store.close()
        schema.drop()


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("state_sqlite_template")
        shutil.copy(template, tmp_path / "vmmgr.db")
        s = open_store(None, tmp_path)
        yield s
        s.close()
        return
    pg: Store = request.getfixturevalue("state_pg_store")
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with pg.engine.begin() as c:
        c.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield pg


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of an empty database (no tables) for migration tests."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    schema = PgSchema(pg_url_or_skip(request))
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture
def host(store: Store) -> Host:
    """One registered, reachable host "h1" with 32 cpus / 64 GiB."""
    from vmmgr.state import repo

    with store.session() as s:
        return repo.add_host(
            s, Host(name="h1", uri="test:///default", state="up", cpus=32, memory_mib=65536)
        )
