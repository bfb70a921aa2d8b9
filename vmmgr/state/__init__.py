"""The vmmgr store: SQLModel tables, Alembic migrations, typed queries (``vmmgr.state.repo``)
and the snapshot builder."""

from vmmgr.state.db import Store, make_engine, open_store
from vmmgr.state.migrate import upgrade_to_head
from vmmgr.state.snapshot_builder import build_snapshot

__all__ = ["Store", "build_snapshot", "make_engine", "open_store", "upgrade_to_head"]
