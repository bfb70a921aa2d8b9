"""Store suite: Alembic migrations produce exactly the models' schema (SQLite and Postgres)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.state import open_store
from vmmgr.state.db import make_engine
from vmmgr.state.migrate import (
    current_revision,
    downgrade_to,
    head_revision,
    schema_diff,
    upgrade_to_head,
)
from vmmgr.state.models import metadata


def test_migrated_schema_equals_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) is None
        upgrade_to_head(engine)
        assert current_revision(engine) == head_revision()
        assert schema_diff(engine) == []
        tables = set(inspect(engine).get_table_names())
        assert tables == {t.name for t in metadata.sorted_tables} | {"alembic_version"}
    finally:
        engine.dispose()


def test_schema_diff_detects_drift(empty_db_url: str) -> None:
    """The comparison above can fail: drop one index and it must be reported."""
    engine = make_engine(empty_db_url)
    try:
        upgrade_to_head(engine)
        with engine.begin() as c:
            c.execute(text("DROP INDEX ix_vm_state"))
        diff = schema_diff(engine)
        assert [d[0] for d in diff] == ["add_index"] and diff[0][1].name == "ix_vm_state"
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        upgrade_to_head(engine)
        upgrade_to_head(engine)  # idempotent
        downgrade_to(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_to_head(engine)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()


def test_open_store_migrates(empty_db_url: str) -> None:
    store = open_store(empty_db_url, Path("/nonexistent"))
    try:
        assert current_revision(store.engine) == head_revision()
    finally:
        store.close()


def test_sequences_never_reuse(empty_db_url: str) -> None:
    """event/audit seq: AUTOINCREMENT on SQLite, a 64-bit identity on Postgres."""
    engine = make_engine(empty_db_url)
    try:
        upgrade_to_head(engine)
        cols = {c["name"]: c for c in inspect(engine).get_columns("event")}
        if engine.dialect.name == "sqlite":
            with engine.connect() as c:
                ddl = c.execute(text("SELECT sql FROM sqlite_master WHERE name='event'")).scalar()
            assert "AUTOINCREMENT" in str(ddl)
        else:
            assert str(cols["seq"]["type"]) == "BIGINT"
            assert cols["seq"]["autoincrement"] is True
    finally:
        engine.dispose()


def test_host_usage_is_filled_from_existing_vms(empty_db_url: str) -> None:
    """Upgrading a store that already has VMs sums them into host_usage, and downgrading
    past 0002 removes the table and its triggers (VM writes keep working)."""
    from sqlmodel import Session

    from vmmgr.state import repo
    from vmmgr.state.models import VM, Host

    engine = make_engine(empty_db_url)
    try:
        upgrade_to_head(engine)
        downgrade_to(engine, "0001")
        assert "host_usage" not in inspect(engine).get_table_names()
        with Session(engine) as s:
            repo.add_host(s, Host(name="h1", uri="x", state="up", cpus=8, memory_mib=8192))
            for n, host in enumerate(("h1", "h1", None)):
                repo.add_vm(s, VM(name=f"v{n}", host=host, vcpus=2, memory_mib=512, disk_gib=3))
            s.commit()
        upgrade_to_head(engine)
        with engine.connect() as c:
            rows = c.execute(text("SELECT host, vcpus, memory_mib, disk_gib FROM host_usage"))
            assert [tuple(r) for r in rows] == [("h1", 4, 1024, 6)]
    finally:
        engine.dispose()
