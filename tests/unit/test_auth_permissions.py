"""The permission table covers every RPC of every vmmgr.v1 service, and means what it says."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vmmgr.v1
from vmmgr.auth import permissions as perm
from vmmgr.state.models import Role

MUTATING_VERBS = ("Create", "Delete", "Update", "Start", "Stop", "Reboot", "Suspend", "Resume",
                  "Migrate", "Register", "Remove", "Enter", "Exit", "Import", "Set", "Rescan",
                  "Apply", "Cancel", "Run", "Revoke", "Configure", "Program")


def all_methods() -> set[str]:
    """Every method of every service in every vmmgr/v1/*_pb2 module."""
    found = set()
    for info in pkgutil.iter_modules(vmmgr.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"vmmgr.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.add(f"/{service.full_name}/{method.name}")
    return found


def test_every_rpc_has_exactly_one_rule() -> None:
    methods = all_methods()
    assert len(methods) > 50  # the enumeration itself works
    missing = sorted(methods - perm.PERMISSIONS.keys())
    stale = sorted(perm.PERMISSIONS.keys() - methods)
    assert not missing, f"methods without a permission rule: {missing}"
    assert not stale, f"rules for methods that do not exist: {stale}"


def test_mutating_methods_are_known_and_need_more_than_viewer() -> None:
    assert perm.PERMISSIONS.keys() >= perm.MUTATING
    for method in perm.MUTATING:
        assert perm.RANK[perm.PERMISSIONS[method]] > perm.RANK[Role.VIEWER], method


def test_every_state_changing_verb_is_audited() -> None:
    for method in perm.PERMISSIONS:
        name = method.rsplit("/", 1)[1]
        if name.startswith(MUTATING_VERBS) and name not in ("GetMigratability",):
            assert method in perm.MUTATING, f"{method} changes state but is not audited"


def test_scoping_sets_name_real_methods() -> None:
    for group in (perm.VM_REF_METHODS, perm.SPEC_METHODS, perm.OPERATION_ID_METHODS,
                  {perm.LIST_VMS, perm.LIST_OPERATIONS, perm.CREATE_VM}):
        assert group <= perm.PERMISSIONS.keys()


@pytest.mark.parametrize(("role", "method", "allowed"), [
    (Role.VIEWER, "/vmmgr.v1.VMService/GetVM", True),
    (Role.VIEWER, "/vmmgr.v1.VMService/CreateVM", False),
    (Role.OPERATOR, "/vmmgr.v1.VMService/CreateVM", True),
    (Role.OPERATOR, "/vmmgr.v1.HostService/RegisterHost", False),
    (Role.OPERATOR, "/vmmgr.v1.ImageService/ImportImage", False),
    (Role.OPERATOR, "/vmmgr.v1.AdminService/ListAuditRecords", False),
    (Role.ADMIN, "/vmmgr.v1.AdminService/CreateToken", True),
    (Role.ADMIN, "/vmmgr.v1.VMService/NoSuchMethod", False),
])
def test_allows(role: Role, method: str, allowed: bool) -> None:
    assert perm.allows(role, method) is allowed


def test_public_methods_are_only_health_and_reflection() -> None:
    assert perm.is_public("/grpc.health.v1.Health/Check")
    assert perm.is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not any(perm.is_public(m) for m in perm.PERMISSIONS)
    assert perm.short_name("/vmmgr.v1.VMService/CreateVM") == "VMService.CreateVM"
