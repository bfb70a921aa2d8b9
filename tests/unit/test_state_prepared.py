"""Prepared statements: the same values and errors as SQLAlchemy's own execution, on both
backends (tests/postgres/test_store.py runs this module against PostgreSQL too)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, StatementError
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Host, Operation, VMLabel
from vmmgr.state.prepared import Prepared
from vmmgr.state.repo._common import violation_kind

_VM = VM.__table__  # type: ignore[attr-defined]
_LABEL = VMLabel.__table__  # type: ignore[attr-defined]
_OP = Operation.__table__  # type: ignore[attr-defined]


def test_rows_convert_like_sqlalchemy_does(store: Store, host: Host) -> None:
    """JSON, booleans, floats and aware UTC timestamps come back as the ORM would give them."""
    with store.session() as s:
        repo.add_vm(s, VM(name="a", vcpus=2, memory_mib=64, host=host.name, labels={"k": "v"},
                          ha=True))
        op = repo.create_operation(s, "vm.create", "a")
    by_name = Prepared(select(_VM).where(_VM.c.name == bindparam("name")))
    get_op = Prepared(select(_OP).where(_OP.c.id == bindparam("id")))
    with store.read_session() as s:
        row = by_name.first(s, {"name": "a"})
        orm = repo.get_vm_by_name(s, "a")
        op_row = get_op.first(s, {"id": op.id})
        assert by_name.first(s, {"name": "nope"}) is None
        assert by_name.rows(s, {"name": "nope"}) == []
    assert VM(**row._asdict()).model_dump() == orm.model_dump()
    assert row.labels == {"k": "v"} and row.ha is True and row.vcpus == 2
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset().total_seconds() == 0
    assert isinstance(op_row.progress, float) and op_row.result == {}
    assert op_row.cancel_requested is False


def test_binds_convert_and_literals_ride_along(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, VM(name="a", vcpus=1, memory_mib=64))
    bump = Prepared(
        update(_VM)
        .where(_VM.c.id == bindparam("vm_id"))
        .values(generation=_VM.c.generation + 1, updated_at=bindparam("now"))
    )
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    with store.session() as s:
        assert bump.execute(s, {"vm_id": vm.id, "now": when}) == 1
        assert bump.execute(s, {"vm_id": "ghost", "now": when}) == 0
    with store.read_session() as s:
        again = repo.get_vm(s, vm.id)
    assert again.generation == vm.generation + 1 and again.updated_at == when
    with pytest.raises(StatementError, match="naive"), store.session() as s:  # the type's check
        bump.execute(s, {"vm_id": vm.id, "now": datetime(2031, 1, 1)})


def test_constraint_violations_are_sqlalchemy_integrity_errors(store: Store) -> None:
    """So repo code maps them to AlreadyExists / NotFound exactly as before."""
    add = Prepared(insert(_LABEL), column_keys=["vm_id", "key", "value"])
    with pytest.raises(IntegrityError) as e, store.session() as s:  # no such VM
        add.execute(s, {"vm_id": "ghost", "key": "k", "value": "v"})
    assert violation_kind(e.value) == "foreign_key"


def test_returning_gives_the_generated_key(store: Store) -> None:
    with store.session() as s:
        first = repo.append_event(s, "vm.created", "a")
        second = repo.append_event(s, "vm.created", "b")
    assert first.seq is not None and second.seq == first.seq + 1
    with store.read_session() as s:
        assert [e.resource for e in repo.list_events(s)] == ["a", "b"]


def test_what_it_cannot_run_is_refused_when_first_used(store: Store) -> None:
    in_list = Prepared(select(_VM.c.id).where(_VM.c.state.in_(["running", "paused"])))
    with pytest.raises(TypeError, match="or_"), store.read_session() as s:
        in_list.rows(s, {})


def test_pending_orm_changes_are_flushed_first(store: Store) -> None:
    """As Session.execute autoflushes: an ORM add in the same transaction is visible."""
    count = Prepared(select(_VM.c.name).where(_VM.c.name == bindparam("name")))
    with store.session() as s:
        s.add(VM(name="pending", vcpus=1, memory_mib=64))
        assert [r.name for r in count.rows(s, {"name": "pending"})] == ["pending"]
