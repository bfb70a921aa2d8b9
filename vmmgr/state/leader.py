"""Which vmmgrd replica runs the periodic policies.

Replicas sharing one PostgreSQL elect the leader with a session-level advisory lock held on a
dedicated connection: if the leader dies, its connection closes, the lock is released and the
next replica's ``is_leader`` takes it. SQLite means one daemon: it is always the leader.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from sqlalchemy import text
from sqlalchemy.engine import Connection

from vmmgr.state.db import Store

log = logging.getLogger(__name__)

POLICY_LOCK_KEY = 0x766D6D67  # "vmmg"


class AlwaysLeader:
    def is_leader(self) -> bool:
        return True

    def release(self) -> None:
        return None


class PostgresAdvisoryLease:
    def __init__(self, store: Store, key: int = POLICY_LOCK_KEY) -> None:
        self.store = store
        self.key = key
        self._conn: Connection | None = None
        self._held = False
        self._lock = threading.Lock()

    def is_leader(self) -> bool:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self.store.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT")
                if self._held:
                    self._conn.execute(text("SELECT 1"))  # still connected = still holding it
                    return True
                self._held = bool(self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
                if self._held:
                    log.info("this vmmgrd is now the policy leader")
                return self._held
            except Exception as exc:  # lost the database: not the leader until it is back
                log.warning("leader lease check failed: %s", exc)
                self._drop()
                return False

    def release(self) -> None:
        with self._lock:
            if self._conn is not None and self._held:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except Exception as exc:  # the connection's end releases it anyway
                    log.info("advisory unlock failed: %s", exc)
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken
                self._conn.close()
        self._conn, self._held = None, False


def leader_lease(store: Store) -> AlwaysLeader | PostgresAdvisoryLease:
    return PostgresAdvisoryLease(store) if store.backend == "postgresql" else AlwaysLeader()
