"""Project scoping: a viewer or operator token of project P sees and touches only P's VMs.

Requests that name a project have it forced to P when empty and refused when it differs;
VMs named by id and operations are checked against their VM's project. Cluster-wide
resources (hosts, images, devices, policies, placement groups, events) are not scoped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlmodel import col, select

from vmmgr.auth import permissions as perm
from vmmgr.auth.principal import Principal
from vmmgr.errors import PermissionDenied
from vmmgr.state import Store
from vmmgr.state.models import VM, Operation


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _force_project(msg: Any, field: str, project: str) -> None:
    asked = msg.project
    if asked and asked != project:
        raise PermissionDenied(
            f"a token of project {project!r} cannot act on project {asked[:80]!r}", field=field
        )
    msg.project = project


def _vm_project(store: Store, vm_id: str) -> str | None:
    with store.read_session() as s:
        vm = s.get(VM, vm_id.lower())
        return vm.project if vm is not None else None


def _check_vm_id(store: Store, vm_id: str, project: str, field: str) -> None:
    if is_uuid(vm_id):
        owner = _vm_project(store, vm_id)
        if owner is not None and owner != project:
            raise PermissionDenied(
                f"vm {vm_id} belongs to another project; a token of project {project!r} "
                "can only act on that project's VMs", field=field)


def scope_request(method: str, request: Any, who: Principal, store: Store) -> None:
    """Force or check the project of ``request`` for a scoped principal (in place)."""
    if who.project is None:
        return
    project = who.project
    if method in perm.VM_REF_METHODS:
        _force_project(request, "project", project)
        _check_vm_id(store, request.vm, project, "vm")
    elif method == perm.LIST_VMS:
        _force_project(request, "project", project)
    elif method in perm.SPEC_METHODS:
        if request.HasField("spec"):
            _force_project(request.spec, "spec.project", project)
    elif method in perm.OPERATION_ID_METHODS:
        if request.id:
            with store.read_session() as s:
                op = s.get(Operation, request.id)
                target = op.target if op is not None else ""
            _check_vm_id(store, target, project, "id")
    elif method == perm.LIST_OPERATIONS and request.target:
        _check_vm_id(store, request.target, project, "target")


def foreign_targets(store: Store, targets: Iterable[str], project: str) -> set[str]:
    """Which of ``targets`` are VM ids of a project other than ``project``."""
    ids = {t.lower() for t in targets if is_uuid(t)}
    if not ids:
        return set()
    with store.read_session() as s:
        rows = s.exec(select(VM.id).where(col(VM.id).in_(ids), VM.project != project))
        return set(rows)


def scope_response(method: str, response: Any, who: Principal, store: Store) -> None:
    """Drop other projects' operations from a ListOperations page (in place)."""
    if who.project is None or method != perm.LIST_OPERATIONS:
        return
    hidden = foreign_targets(store, (o.target for o in response.operations), who.project)
    if hidden:
        keep = [o for o in response.operations if o.target.lower() not in hidden]
        del response.operations[:]
        response.operations.extend(keep)
