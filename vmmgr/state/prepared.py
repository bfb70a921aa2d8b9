"""Hot statements compiled once and run on the transaction's own driver connection.

A VM create runs about twenty statements. Through SQLAlchemy's execution layer each costs
several times what the database spends on it (events, cache keys, parameter and result
objects); that overhead was the largest part of vmmgrd's time per create. ``Prepared`` keeps
what matters of that layer, done once per dialect instead of per call: the SQL text SQLAlchemy
compiles for the Core statement, its parameter order, and the column types' own bind and
result conversions (``UTCDateTime``, JSON, booleans). Driver errors come back as SQLAlchemy's
``DBAPIError`` subclasses, so ``IntegrityError`` handling is the same either way.

The statement runs inside the session's transaction (same connection, same BEGIN), on SQLite
and Postgres alike. Everything else keeps using the ORM or ``Connection.execute``.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel import Session

Processor = Callable[[Any], Any] | None


@dataclass(slots=True)
class _Plan:
    sql: str
    positional: tuple[str, ...] | None  # bind names in order (qmark), None for named styles
    binds: tuple[tuple[str, Processor, Any], ...]  # name, conversion, literal value
    columns: tuple[Any, ...]  # the result columns (their types convert the values)
    row: Any  # a namedtuple class over the result columns, or None
    results: tuple[Processor, ...] | None = None  # resolved at the first fetch (needs the
    # driver's column type codes: Postgres picks a numeric conversion by them)


class Prepared:
    """One Core statement (select, insert, update) with named ``bindparam``s."""

    def __init__(self, stmt: ClauseElement, *, column_keys: Sequence[str] | None = None) -> None:
        self.stmt = stmt
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[Any]:
        """Run and return every result row (named tuples, values converted)."""
        plan, cursor, dialect = self._run(session, params)
        try:
            raw = cursor.fetchall()
            procs = plan.results
            if procs is None:
                procs = plan.results = tuple(
                    c.type.dialect_impl(dialect).result_processor(dialect, d[1])
                    for c, d in zip(plan.columns, cursor.description, strict=True)
                )
        finally:
            cursor.close()
        make = plan.row._make
        if not any(procs):
            return [make(r) for r in raw]
        return [
            make([v if p is None else p(v) for p, v in zip(procs, r, strict=True)]) for r in raw
        ]

    def first(self, session: Session, params: Mapping[str, Any]) -> Any:
        found = self.rows(session, params)
        return found[0] if found else None

    def execute(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run a statement without results; the number of rows it changed."""
        _, cursor, _ = self._run(session, params)
        count = int(cursor.rowcount)
        cursor.close()
        return count

    def _run(self, session: Session, params: Mapping[str, Any]) -> tuple[_Plan, Any, Dialect]:
        session.flush()  # pending ORM changes first, as Session.execute's autoflush does
        conn = session.connection()
        dialect = conn.dialect
        plan = self._plans.get(dialect.name) or self._compile(dialect)
        values = {}
        try:
            for name, proc, literal in plan.binds:
                value = params.get(name, literal)
                values[name] = value if proc is None else proc(value)
        except Exception as e:  # a type's own check (UTCDateTime refuses naive): as SQLAlchemy
            raise exc.StatementError(
                f"({type(e).__module__}.{type(e).__name__}) {e}", plan.sql, dict(params), e
            ) from e
        args: Any = values if plan.positional is None else [values[n] for n in plan.positional]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(plan.sql, args)
        except dialect.loaded_dbapi.Error as e:
            cursor.close()
            raise exc.DBAPIError.instance(
                plan.sql, args, e, dialect.loaded_dbapi.Error, dialect=dialect
            ) from e
        return plan, cursor, dialect

    def _compile(self, dialect: Dialect) -> _Plan:
        with self._lock:
            compiled = cast(
                SQLCompiler, self.stmt.compile(dialect=dialect, column_keys=self.column_keys)
            )
            if compiled.insert_prefetch or compiled.update_prefetch:
                raise TypeError("Prepared cannot run statements with Python-side defaults")
            if "POSTCOMPILE" in compiled.string:
                raise TypeError("Prepared cannot run IN (...) lists; spell them out with or_()")
            rendered: dict[str, Any] = {}  # the name in the SQL text -> its bindparam
            for bind, name in compiled.bind_names.items():
                rendered.setdefault(name, bind)
            binds = tuple(
                (name, bind.type.dialect_impl(dialect).bind_processor(dialect), bind.value)
                for name, bind in rendered.items()
            )
            columns = tuple(getattr(self.stmt, "selected_columns", ()))
            columns = columns or tuple(getattr(compiled, "returning", None) or ())
            row = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None
            positional = tuple(compiled.positiontup or ()) if compiled.positional else None
            plan = _Plan(compiled.string, positional, binds, columns, row)
            self._plans[dialect.name] = plan
            return plan
