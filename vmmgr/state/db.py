"""Opening the store: engine set-up per backend, migrations, and transactional sessions.

SQLite (the default, ``{state_dir}/vmmgr.db``) runs in WAL mode with foreign keys on. pysqlite's
own implicit transaction handling is switched off and vmmgr emits ``BEGIN`` itself: write
sessions use ``BEGIN IMMEDIATE`` so two writers queue on ``busy_timeout`` instead of failing
with "database is locked" when a read lock cannot be upgraded; read sessions use a plain
(deferred) ``BEGIN`` and never block writers in WAL mode. This also makes SAVEPOINTs work, which
the repo uses to turn constraint violations into vmmgr errors without losing the transaction.

Postgres is reached through psycopg 3 (``postgresql+psycopg://``; a bare ``postgresql://`` is
rewritten to it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from vmmgr.errors import InvalidArgument
from vmmgr.state.migrate import upgrade_to_head

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
_WRITE_OPTION = "vmmgr_write"


class Store:
    """The daemon's handle on the database; thread-safe (one engine, a session per use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def backend(self) -> str:
        """The dialect name: sqlite or postgresql."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-write transaction: commits when the block ends, rolls back on any error.

        Objects stay usable after the block (``expire_on_commit=False``), detached.
        """
        with self._session(write=True) as s:
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A transaction meant for reads (on SQLite it does not take the write lock up front)."""
        with self._session(write=False) as s:
            yield s

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                if not write:  # the option rides on the connection, read by the begin hook
                    s.connection(execution_options={_WRITE_OPTION: False})
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'vmmgr.db'}"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine configured for vmmgr (no migrations); ``open_store`` is what the daemon uses."""
    parsed = _normalise(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise InvalidArgument("database_url", f"unsupported database {parsed.get_backend_name()!r}")


def open_store(url: str | None, state_dir: Path, *, migrate: bool = True) -> Store:
    """Open (creating if needed) the store at ``url`` or the SQLite file in ``state_dir`` and
    bring its schema to the newest migration."""
    if not url:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(state_dir)
    engine = make_engine(url)
    if migrate:
        upgrade_to_head(engine)
    log.info("store open: %s", engine.url.render_as_string(hide_password=True))
    return Store(engine)


def _normalise(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception as e:  # sqlalchemy raises ArgumentError with the raw string
        raise InvalidArgument("database_url", f"not a database URL: {e}") from e
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    memory = url.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, or every session sees a new db
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit at the driver; we emit BEGIN below
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, True)
        # straight to the driver: every transaction starts here, and SQLAlchemy's statement
        # machinery would cost several times the BEGIN itself
        conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if write else "BEGIN"
        )

    return engine
