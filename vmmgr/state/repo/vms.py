"""VMs: desired state rows, label index, keyset-paginated listing, optimistic concurrency."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, tuple_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from vmmgr.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from vmmgr.state.models import (
    VM,
    DeviceClaim,
    Host,
    PowerState,
    VMLabel,
    VMState,
    Volume,
)
from vmmgr.state.prepared import Prepared
from vmmgr.state.repo._common import (
    Page,
    check_choice,
    decode_token,
    encode_token,
    get_or_404,
    insert_rows,
    savepoint,
    violation_kind,
)
from vmmgr.state.repo._common import (
    page_size as _clamp_page_size,
)
from vmmgr.state.repo.volumes import check_volume
from vmmgr.state.types import utcnow

_UPDATABLE = frozenset(VM.model_fields) - {"id", "created_at", "updated_at", "generation"}


def _duplicate(vm_name: str, project: str) -> AlreadyExists:
    return AlreadyExists(f"a VM named {vm_name!r} exists in project {project!r}", field="name")


def _check_values(values: Mapping[str, Any]) -> None:
    if "state" in values:
        check_choice("state", values["state"], VMState)
    if "desired_power" in values:
        check_choice("desired_power", values["desired_power"], PowerState)


def _check_host(session: Session, host: str | None) -> None:
    if host is not None and session.get(Host, host) is None:
        raise NotFound(f"host {host!r} not found", field="host")


def _set_labels(session: Session, vm_id: str, labels: Mapping[str, str]) -> None:
    session.execute(delete(VMLabel).where(col(VMLabel.vm_id) == vm_id))
    session.add_all(VMLabel(vm_id=vm_id, key=k, value=v) for k, v in labels.items())


def add_vm(session: Session, vm: VM, volumes: Collection[Volume] = ()) -> VM:
    """Insert a new VM with its labels and ``volumes`` (one SAVEPOINT: a taken name is
    AlreadyExists, an unknown host NotFound, and the caller's transaction stays usable)."""
    _check_values({"state": vm.state, "desired_power": vm.desired_power})
    for volume in volumes:
        check_volume(volume)
    vm.labels = dict(vm.labels)
    try:
        with savepoint(session):
            insert_rows(session, VM, [vm])
            if vm.labels:
                insert_rows(
                    session,
                    VMLabel,
                    [VMLabel(vm_id=vm.id, key=k, value=v) for k, v in vm.labels.items()],
                )
            if volumes:
                insert_rows(session, Volume, volumes)
    except IntegrityError as e:
        kind = violation_kind(e)
        if kind == "unique":
            raise _duplicate(vm.name, vm.project) from e
        if kind == "foreign_key" and vm.host is not None:  # the one reference a new VM has
            raise NotFound(f"host {vm.host!r} not found", field="host") from e
        raise
    return vm


def get_vm(session: Session, vm_id: str) -> VM:
    return get_or_404(session, VM, vm_id, "vm")


def find_vm(session: Session, vm_id: str) -> VM | None:
    return session.get(VM, vm_id)


_NAME_TAKEN = Prepared(
    sa_select(col(VM.id))
    .where(col(VM.project) == bindparam("project"), col(VM.name) == bindparam("name"))
    .limit(1)
)


def name_taken(session: Session, name: str, project: str) -> bool:
    return _NAME_TAKEN.first(session, {"project": project, "name": name}) is not None


_STATE_AND_HOST = Prepared(
    sa_select(col(VM.state), col(VM.host)).where(col(VM.id) == bindparam("vm_id"))
)


def state_and_host(session: Session, vm_id: str) -> tuple[str, str | None] | None:
    """A VM's (state, host), None if there is no such VM: what every libvirt event asks."""
    row = _STATE_AND_HOST.first(session, {"vm_id": vm_id})
    return None if row is None else (row[0], row[1])


def get_vm_by_name(session: Session, name: str, project: str = "default") -> VM:
    vm = session.exec(select(VM).where(VM.project == project, VM.name == name)).first()
    if vm is None:
        raise NotFound(f"vm {name!r} not found in project {project!r}", field="name")
    return vm


def list_vms(
    session: Session,
    *,
    project: str | None = None,
    host: str | None = None,
    states: Collection[str] | None = None,
    labels: Mapping[str, str] | None = None,
    page_size: int = 0,
    page_token: str = "",
    include_spec: bool = True,
) -> Page[VM]:
    """VMs ordered by (name, id) in the database's collation; keyset pagination, so pages stay
    cheap however deep (no OFFSET).

    ``labels`` matches VMs carrying every given key=value. ``page_size`` 0 means the default
    (100); the maximum is 1000. ``include_spec=False`` skips loading (and JSON-decoding) the
    create spec, the bulk of a row; touching ``vm.spec`` on such a VM then raises.
    """
    size = _clamp_page_size(page_size)
    q = select(VM)
    if not include_spec:
        q = q.options(defer(VM.spec, raiseload=True))  # type: ignore[arg-type]
    if project is not None:
        q = q.where(VM.project == project)
    if host is not None:
        q = q.where(VM.host == host)
    if states:
        q = q.where(col(VM.state).in_(list(states)))
    for key, value in (labels or {}).items():
        q = q.where(
            col(VM.id).in_(select(VMLabel.vm_id).where(VMLabel.key == key, VMLabel.value == value))
        )
    if page_token:
        name, vm_id = decode_token(page_token, 2)
        # a row-value comparison: Postgres turns it into an index range (an OR of the two
        # conditions would be a filter over every earlier row); SQLite >= 3.15 does too
        q = q.where(tuple_(col(VM.name), col(VM.id)) > tuple_(name, vm_id))
    q = q.order_by(col(VM.name), col(VM.id)).limit(size + 1)
    rows = list(session.exec(q))
    if len(rows) > size:
        last = rows[size - 1]
        return Page(rows[:size], encode_token(last.name, last.id))
    return Page(rows, "")


def count_vms(session: Session, *, project: str | None = None, host: str | None = None) -> int:
    q = select(func.count()).select_from(VM)
    if project is not None:
        q = q.where(VM.project == project)
    if host is not None:
        q = q.where(VM.host == host)
    return int(session.exec(q).one())


@dataclass(frozen=True, slots=True)
class Usage:
    vms: int
    vcpus: int
    memory_mib: int
    disk_gib: int


def project_usage(session: Session, project: str) -> Usage:
    """What a project's VMs hold, for quota checks."""
    row = session.exec(
        select(
            func.count(),
            func.coalesce(func.sum(VM.vcpus), 0),
            func.coalesce(func.sum(VM.memory_mib), 0),
            func.coalesce(func.sum(VM.disk_gib), 0),
        ).where(VM.project == project)
    ).one()
    return Usage(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


_VM = VM.__table__  # type: ignore[attr-defined]
_SET_STATE = Prepared(
    update(_VM)
    .where(_VM.c.id == bindparam("vm_id"))
    .values(
        state=bindparam("new_state"),
        state_reason=bindparam("reason"),
        generation=_VM.c.generation + 1,
        updated_at=bindparam("now"),
    )
)


def set_vm_state(session: Session, vm_id: str, state: VMState, reason: str = "") -> None:
    """``update_vm`` for the hottest change, the observed state, in one statement."""
    changed = _SET_STATE.execute(
        session, {"vm_id": vm_id, "new_state": state.value, "reason": reason, "now": utcnow()}
    )
    if changed != 1:
        raise NotFound(f"vm {vm_id!r} not found")


def update_vm(
    session: Session,
    vm_id: str,
    changes: Mapping[str, Any],
    *,
    expected_generation: int | None = None,
) -> VM:
    """Apply ``changes`` and bump ``generation`` in one compare-and-set UPDATE.

    With ``expected_generation`` the update happens only if nobody changed the VM since that
    generation was read; otherwise it raises Aborted (retry from a fresh read).
    """
    for key in changes:
        if key not in _UPDATABLE:
            raise InvalidArgument(key, f"VM.{key} cannot be updated")
    _check_values(changes)
    if "host" in changes:
        _check_host(session, changes["host"])
    values: dict[str, Any] = dict(changes)
    if "labels" in values:
        values["labels"] = dict(values["labels"])
    cond = [col(VM.id) == vm_id]
    if expected_generation is not None:
        cond.append(col(VM.generation) == expected_generation)
    stmt = (
        update(VM)
        .where(*cond)
        .values(**values, generation=col(VM.generation) + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    try:
        with session.begin_nested():
            result = session.execute(stmt)
            if result.rowcount == 1 and "labels" in values:  # type: ignore[attr-defined]
                _set_labels(session, vm_id, values["labels"])
                session.flush()
    except IntegrityError as e:
        if violation_kind(e) == "unique":
            vm = get_vm(session, vm_id)
            raise _duplicate(values.get("name", vm.name), values.get("project", vm.project)) from e
        raise
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = session.get(VM, vm_id, populate_existing=True)
        if current is None:
            raise NotFound(f"vm {vm_id!r} not found")
        raise Aborted(
            f"vm {vm_id!r} changed concurrently: generation is {current.generation}, "
            f"expected {expected_generation}",
            field="generation",
        )
    updated = session.get(VM, vm_id, populate_existing=True)
    assert updated is not None
    return updated


def delete_vm(
    session: Session,
    vm_id: str,
    *,
    expected_generation: int | None = None,
    force: bool = False,
) -> VM:
    """Delete the VM row (labels and group memberships go with it).

    Volumes and device claims record what must be undone on the host, so a VM still holding
    any is refused unless ``force`` (then those rows are dropped too).
    """
    vm = get_vm(session, vm_id)
    if expected_generation is not None and vm.generation != expected_generation:
        raise Aborted(
            f"vm {vm_id!r} changed concurrently: generation is {vm.generation}, "
            f"expected {expected_generation}",
            field="generation",
        )
    volumes = session.exec(
        select(func.count()).select_from(Volume).where(Volume.vm_id == vm_id)
    ).one()
    claims = session.exec(
        select(func.count()).select_from(DeviceClaim).where(DeviceClaim.vm_id == vm_id)
    ).one()
    if (volumes or claims) and not force:
        raise FailedPrecondition(
            f"vm {vm_id!r} still holds {volumes} volumes and {claims} device claims"
        )
    session.execute(delete(Volume).where(col(Volume.vm_id) == vm_id))
    session.execute(delete(DeviceClaim).where(col(DeviceClaim.vm_id) == vm_id))
    stmt = delete(VM).where(col(VM.id) == vm_id)
    if expected_generation is not None:
        stmt = stmt.where(col(VM.generation) == expected_generation)
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise Aborted(f"vm {vm_id!r} changed concurrently", field="generation")
    session.expunge(vm)
    return vm
