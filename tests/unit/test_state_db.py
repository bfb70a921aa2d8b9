"""Store suite: engine set-up, sessions, timestamps, concurrency."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.errors import InvalidArgument
from vmmgr.state import Store, make_engine, open_store, repo
from vmmgr.state.models import VM, Host


def _only_once(backend: str) -> None:
    """For tests that do not depend on the backend under test: run them in the SQLite pass."""
    if backend != "sqlite":
        pytest.skip("backend-independent; runs in the SQLite pass (tests/unit)")


def test_session_commits_on_success_and_rolls_back_on_error(store: Store) -> None:
    with store.session() as s:
        repo.add_host(s, Host(name="kept", uri="x"))
    with pytest.raises(RuntimeError), store.session() as s:
        repo.add_host(s, Host(name="lost", uri="x"))
        raise RuntimeError("boom")
    with store.read_session() as s:
        assert [h.name for h in repo.list_hosts(s)] == ["kept"]


def test_objects_usable_after_session(store: Store) -> None:
    with store.session() as s:
        h = repo.add_host(s, Host(name="a", uri="x", tags=["t"]))
    assert h.name == "a" and h.tags == ["t"]  # no DetachedInstanceError


def test_timestamps_are_aware_utc_and_naive_is_refused(store: Store) -> None:
    cet = timezone(timedelta(hours=1))
    with store.session() as s:
        repo.add_host(s, Host(name="a", uri="x", last_seen=datetime(2030, 1, 1, 13, tzinfo=cet)))
    with store.read_session() as s:
        seen = repo.get_host(s, "a").last_seen
    assert seen is not None and seen.tzinfo is not None and seen.utcoffset() == timedelta(0)
    assert seen.hour == 12
    with pytest.raises(StatementError, match="naive"), store.session() as s:
        repo.add_host(s, Host(name="b", uri="x", last_seen=datetime(2030, 1, 1)))


def test_backend_name(store: Store, backend: str) -> None:
    assert store.backend == {"sqlite": "sqlite", "postgres": "postgresql"}[backend]


def test_concurrent_writers_from_threads(store: Store) -> None:
    """A gRPC-like thread pool: 8 threads x 10 transactions, all must succeed."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        barrier.wait()
        try:
            for i in range(10):
                with store.session() as s:
                    repo.count_vms(s)  # read, then write, in one transaction
                    repo.add_vm(s, VM(name=f"t{t}-{i}", vcpus=1, memory_mib=1))
                    repo.append_event(s, "vm.created", f"t{t}-{i}")
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert errors == []
    with store.read_session() as s:
        assert repo.count_vms(s) == 80
        assert len(repo.list_events(s)) == 80


def test_sqlite_file_pragmas(tmp_path: Path, backend: str) -> None:
    _only_once(backend)
    store = open_store(None, tmp_path / "state")
    try:
        assert (tmp_path / "state" / "vmmgr.db").exists()
        with store.engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert c.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert c.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    finally:
        store.close()


def test_a_read_session_does_not_wait_for_an_open_writer(store: Store) -> None:
    """A write transaction holds SQLite's write lock from its start (BEGIN IMMEDIATE); a read
    session must not queue behind it (nor behind a Postgres writer), and sees the last commit."""
    with store.session() as s:
        repo.add_host(s, Host(name="old", uri="x"))
    seen: list[list[str]] = []
    with store.session() as w:
        repo.add_host(w, Host(name="pending", uri="x"))
        reader = threading.Thread(
            target=lambda: seen.append([h.name for h in _read_hosts(store)])
        )
        reader.start()
        reader.join(timeout=5)  # busy_timeout is 10 s: a queued reader would still wait
        assert not reader.is_alive()
    assert seen == [["old"]]
    with store.session() as w:  # and the write lock is really taken at the first statement
        w.connection()
        blocked = threading.Thread(target=lambda: _write_host(store, "late"))
        blocked.start()
        blocked.join(timeout=0.5)
        assert blocked.is_alive() or store.backend != "sqlite"
    blocked.join(timeout=15)


def _read_hosts(store: Store) -> list[Host]:
    with store.read_session() as s:
        return repo.list_hosts(s)


def _write_host(store: Store, name: str) -> None:
    with store.session() as s:
        repo.add_host(s, Host(name=name, uri="x"))


def test_sqlite_in_memory_is_one_shared_database(tmp_path: Path, backend: str) -> None:
    _only_once(backend)
    store = open_store("sqlite://", tmp_path)
    try:
        with store.session() as s:
            repo.add_host(s, Host(name="a", uri="x"))
        with store.read_session() as s:
            assert repo.get_host(s, "a").uri == "x"
    finally:
        store.close()


def test_bad_urls_name_the_field(backend: str) -> None:
    _only_once(backend)
    for url in ("not a url", "mysql://u@h/db"):
        with pytest.raises(InvalidArgument) as e:
            make_engine(url)
        assert e.value.field == "database_url"


def test_plain_postgresql_url_uses_psycopg3(backend: str) -> None:
    _only_once(backend)
    engine = make_engine("postgresql://u:p@127.0.0.1:1/db")  # lazy: does not connect
    try:
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        engine.dispose()
