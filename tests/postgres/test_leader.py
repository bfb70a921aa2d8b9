"""Two daemons on one PostgreSQL: exactly one holds the policy lease; it passes on release."""

from __future__ import annotations

from pathlib import Path

from vmmgr.state import open_store
from vmmgr.state.leader import PostgresAdvisoryLease, leader_lease

KEY = 0x5E57  # not the daemon's key: a developer's vmmgrd may share this server


def test_one_leader_and_handover(pg_url: str, tmp_path: Path) -> None:
    a_store, b_store = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    a, b = PostgresAdvisoryLease(a_store, KEY), PostgresAdvisoryLease(b_store, KEY)
    try:
        assert a.is_leader() and a.is_leader()
        assert not b.is_leader()
        a.release()
        assert b.is_leader()
        assert not a.is_leader()
    finally:
        a.release()
        b.release()
        a_store.close()
        b_store.close()


def test_sqlite_is_always_leader(tmp_path: Path) -> None:
    store = open_store(None, tmp_path)
    assert leader_lease(store).is_leader()
    store.close()
