"""Helpers shared by the repo modules: constraint violations -> vmmgr errors, field updates,
page tokens, value validation."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Table, bindparam, select
from sqlalchemy import insert as sa_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

from vmmgr.errors import InvalidArgument, NotFound, VmmgrError
from vmmgr.state.prepared import Prepared
from vmmgr.state.rows import build

T = TypeVar("T", bound=SQLModel)
I = TypeVar("I")  # noqa: E741

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Page(Generic[I]):
    items: list[I]
    next_page_token: str = ""  # "" = last page


def violation_kind(e: IntegrityError) -> str:
    """Which constraint failed: unique, foreign_key or other (same answer on both backends)."""
    sqlstate = getattr(e.orig, "sqlstate", None)  # psycopg
    if sqlstate == "23505":
        return "unique"
    if sqlstate == "23503":
        return "foreign_key"
    msg = str(e.orig)
    if "UNIQUE constraint failed" in msg:
        return "unique"
    if "FOREIGN KEY constraint failed" in msg:
        return "foreign_key"
    return "other"


def insert(
    session: Session,
    obj: T,
    *,
    duplicate: Callable[[], VmmgrError],
    missing_reference: Callable[[], VmmgrError] | None = None,
) -> T:
    """Add and flush ``obj`` inside a SAVEPOINT; a constraint violation becomes a vmmgr error
    and leaves the caller's transaction usable."""
    try:
        with session.begin_nested():
            session.add(obj)
            session.flush()
    except IntegrityError as e:
        kind = violation_kind(e)
        if kind == "unique":
            raise duplicate() from e
        if kind == "foreign_key" and missing_reference is not None:
            raise missing_reference() from e
        raise
    return obj


_INSERTS: dict[tuple[str, tuple[str, ...]], Prepared] = {}


def insert_rows(session: Session, model: type[SQLModel], objs: Collection[SQLModel]) -> list[Any]:
    """INSERT ``objs`` (rows of ``model``); the primary key of each, in order.

    Hot write paths (a VM create, an operation, an audit or event row) use this instead of
    ``session.add``: the ORM's unit of work costs several times the statement itself. The
    objects are not attached to the session; an unset primary key (autoincrement) is left to
    the database and read back.
    """
    table: Table = model.__table__  # type: ignore[attr-defined]
    pks = list(table.primary_key.columns)
    keys: list[Any] = []
    for obj in objs:
        row = {c.name: getattr(obj, c.name) for c in table.columns}
        generated = [c for c in pks if row[c.name] is None]
        for c in generated:
            del row[c.name]
        names = tuple(row)
        stmt = _INSERTS.get((table.name, names))
        if stmt is None:
            query = sa_insert(table).returning(*generated) if generated else sa_insert(table)
            stmt = _INSERTS[(table.name, names)] = Prepared(query, column_keys=names)
        if generated:
            keys.append(stmt.first(session, row)[0])
        else:
            stmt.execute(session, row)
            keys.append(row[pks[0].name] if len(pks) == 1 else tuple(row[c.name] for c in pks))
    return keys


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A SAVEPOINT around prepared statements: an error inside undoes them and leaves the
    caller's transaction usable (on Postgres too). ``Session.begin_nested`` does the same with
    ORM bookkeeping that costs more than the inserts; pending ORM changes are flushed before,
    so a rollback here never takes rows the ORM believes written."""
    session.flush()
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SAVEPOINT vmmgr_rows")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK TO SAVEPOINT vmmgr_rows")
            raise
        cursor.execute("RELEASE SAVEPOINT vmmgr_rows")
    finally:
        cursor.close()


_GETS: dict[str, Prepared] = {}


def read_row(session: Session, model: type[T], key: Any) -> T | None:
    """The row of ``model`` with primary key ``key``, detached: for hot read-only lookups
    (``session.get`` costs several times as much). Never change and flush it."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    stmt = _GETS.get(table.name)
    if stmt is None:
        (pk,) = table.primary_key.columns
        stmt = _GETS[table.name] = Prepared(select(table).where(pk == bindparam("key")))
    row = stmt.first(session, {"key": key})
    return None if row is None else build(model, row._asdict())


def get_or_404(session: Session, model: type[T], key: Any, what: str) -> T:
    obj = session.get(model, key)
    if obj is None:
        raise NotFound(f"{what} {key!r} not found")
    return obj


def check_choice(field: str, value: str, allowed: Iterable[str]) -> str:
    options = [str(a) for a in allowed]
    if value not in options:
        raise InvalidArgument(field, f"{value!r} is not one of {', '.join(options)}")
    return str(value)


def apply_changes(obj: SQLModel, changes: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Set ``changes`` on ``obj`` only after every key was checked (no half-applied update)."""
    for key in changes:
        if key not in allowed:
            raise InvalidArgument(key, f"{type(obj).__name__}.{key} cannot be updated")
    for key, value in changes.items():
        setattr(obj, key, value)


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(*parts: str) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, n: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        parts = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument("page_token", "malformed page token") from e
    if not (isinstance(parts, list) and len(parts) == n and all(isinstance(p, str) for p in parts)):
        raise InvalidArgument("page_token", "malformed page token")
    return parts
