"""Placement groups (affinity / anti-affinity) and their VM members."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from vmmgr.errors import AlreadyExists, FailedPrecondition, NotFound
from vmmgr.state.models import VM, GroupPolicy, PlacementGroup, VMGroupMember
from vmmgr.state.repo._common import check_choice, get_or_404, insert


def add_group(session: Session, group: PlacementGroup) -> PlacementGroup:
    check_choice("policy", group.policy, GroupPolicy)
    return insert(
        session,
        group,
        duplicate=lambda: AlreadyExists(f"group {group.name!r} exists", field="name"),
    )


def get_group(session: Session, name: str) -> PlacementGroup:
    return get_or_404(session, PlacementGroup, name, "group")


def list_groups(session: Session) -> list[PlacementGroup]:
    return list(session.exec(select(PlacementGroup).order_by(col(PlacementGroup.name))))


def delete_group(session: Session, name: str, *, force: bool = False) -> PlacementGroup:
    """Refused while the group has members, unless ``force`` (memberships are dropped)."""
    group = get_group(session, name)
    members = session.exec(
        select(func.count()).select_from(VMGroupMember).where(VMGroupMember.group_name == name)
    ).one()
    if members and not force:
        raise FailedPrecondition(f"group {name!r} still has {members} members", field="name")
    session.execute(delete(VMGroupMember).where(col(VMGroupMember.group_name) == name))
    session.delete(group)
    session.flush()
    return group


def add_group_member(session: Session, group: str, vm_id: str) -> None:
    """Idempotent: adding a member twice is not an error."""
    get_group(session, group)
    if session.get(VM, vm_id) is None:
        raise NotFound(f"vm {vm_id!r} not found", field="vm_id")
    if session.get(VMGroupMember, (vm_id, group)) is None:
        session.add(VMGroupMember(vm_id=vm_id, group_name=group))
        session.flush()


def remove_group_member(session: Session, group: str, vm_id: str) -> bool:
    """True if the VM was a member."""
    member = session.get(VMGroupMember, (vm_id, group))
    if member is None:
        return False
    session.delete(member)
    session.flush()
    return True


def set_vm_groups(session: Session, vm_id: str, groups: Sequence[str]) -> None:
    """Make ``groups`` exactly the VM's memberships."""
    if session.get(VM, vm_id) is None:
        raise NotFound(f"vm {vm_id!r} not found", field="vm_id")
    for g in groups:
        if session.get(PlacementGroup, g) is None:
            raise NotFound(f"group {g!r} not found", field="groups")
    session.execute(delete(VMGroupMember).where(col(VMGroupMember.vm_id) == vm_id))
    session.add_all(VMGroupMember(vm_id=vm_id, group_name=g) for g in dict.fromkeys(groups))
    session.flush()


def group_members(session: Session, group: str) -> list[str]:
    get_group(session, group)
    q = (
        select(VMGroupMember.vm_id)
        .where(VMGroupMember.group_name == group)
        .order_by(col(VMGroupMember.vm_id))
    )
    return list(session.exec(q))


def groups_of_vm(session: Session, vm_id: str) -> list[str]:
    q = (
        select(VMGroupMember.group_name)
        .where(VMGroupMember.vm_id == vm_id)
        .order_by(col(VMGroupMember.group_name))
    )
    return list(session.exec(q))
