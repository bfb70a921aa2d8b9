"""The per-RPC permission table: the one place that says who may call what.

Roles are ordered viewer < operator < admin; a method needs at least its listed role.
``MUTATING`` lists the methods that change state: each call to one is written to the audit log.
A test enumerates every service of vmmgr.v1 and fails when a method is missing here.
"""

from __future__ import annotations

from vmmgr.state.models import Role

RANK: dict[Role, int] = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}

V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN

_TABLE: dict[str, dict[str, Role]] = {
    "vmmgr.v1.VMService": {
        "CreateVM": OP, "GetVM": V, "ListVMs": V, "DeleteVM": OP, "StartVM": OP, "StopVM": OP,
        "RebootVM": OP, "SuspendVM": OP, "ResumeVM": OP, "ExplainPlacement": V, "MigrateVM": OP,
        "GetMigratability": V, "CreatePlacementGroup": OP, "ListPlacementGroups": V,
        "DeletePlacementGroup": OP,
    },
    "vmmgr.v1.HostService": {
        "RegisterHost": A, "GetHost": V, "ListHosts": V, "UpdateHost": A, "RemoveHost": A,
        "ListForeignDomains": V, "EnterMaintenance": A, "ExitMaintenance": A,
    },
    # ImportImage reads a path on the daemon's machine: admin only.
    "vmmgr.v1.ImageService": {
        "ImportImage": A, "GetImage": V, "ListImages": V, "DeleteImage": A,
    },
    "vmmgr.v1.DeviceService": {
        "ListDevices": V, "GetDevice": V, "GetDeviceTelemetry": V, "SetDeviceHealth": A,
        "RescanDevices": A, "PlanMigGeometry": V, "ApplyMigGeometry": A,
    },
    "vmmgr.v1.OperationService": {
        "GetOperation": V, "ListOperations": V, "WaitOperation": V, "CancelOperation": OP,
        "WatchOperation": V,
    },
    "vmmgr.v1.EventService": {"ListEvents": V, "WatchEvents": V},
    # Scale groups clone a template VM of any project: admin until they carry a project.
    "vmmgr.v1.PolicyService": {
        "ListPolicies": V, "GetPolicy": V, "UpdatePolicy": A, "PlanPolicy": V, "RunPolicy": A,
        "CreateScaleGroup": A, "GetScaleGroup": V, "ListScaleGroups": V, "UpdateScaleGroup": A,
        "DeleteScaleGroup": A,
    },
    "vmmgr.v1.AdminService": {
        "CreateToken": A, "ListTokens": A, "RevokeToken": A, "CreateProject": A,
        "ListProjects": A, "UpdateProject": A, "ListAuditRecords": A,
    },
    "vmmgr.v1.HostAgentService": {
        "GetGpuFacts": A, "ConfigureMig": A, "ProgramFpga": A, "Heartbeat": A,
        "GetInventory": A, "CreateMdev": A, "RemoveMdev": A, "SetMigMode": A,
    },
}

PERMISSIONS: dict[str, Role] = {
    f"/{service}/{method}": role
    for service, methods in _TABLE.items()
    for method, role in methods.items()
}

_MUTATING_NAMES = {
    "vmmgr.v1.VMService": ["CreateVM", "DeleteVM", "StartVM", "StopVM", "RebootVM", "SuspendVM",
                           "ResumeVM", "MigrateVM", "CreatePlacementGroup",
                           "DeletePlacementGroup"],
    "vmmgr.v1.HostService": ["RegisterHost", "UpdateHost", "RemoveHost", "EnterMaintenance",
                             "ExitMaintenance"],
    "vmmgr.v1.ImageService": ["ImportImage", "DeleteImage"],
    "vmmgr.v1.DeviceService": ["SetDeviceHealth", "RescanDevices", "ApplyMigGeometry"],
    "vmmgr.v1.OperationService": ["CancelOperation"],
    "vmmgr.v1.PolicyService": ["UpdatePolicy", "RunPolicy", "CreateScaleGroup",
                               "UpdateScaleGroup", "DeleteScaleGroup"],
    "vmmgr.v1.AdminService": ["CreateToken", "RevokeToken", "CreateProject", "UpdateProject"],
    "vmmgr.v1.HostAgentService": ["ConfigureMig", "ProgramFpga", "CreateMdev", "RemoveMdev",
                                  "SetMigMode"],
}

MUTATING: frozenset[str] = frozenset(
    f"/{service}/{method}" for service, names in _MUTATING_NAMES.items() for method in names
)

# Served without a token: health checks (load balancers, systemd probes) and reflection
# (the schema is public; every call it describes is still checked).
PUBLIC_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# VM-level methods whose request names a VM by ``vm`` (name or id) within ``project``.
VM_REF_METHODS: frozenset[str] = frozenset(
    f"/vmmgr.v1.VMService/{m}"
    for m in ("GetVM", "DeleteVM", "StartVM", "StopVM", "RebootVM", "SuspendVM", "ResumeVM",
              "MigrateVM", "GetMigratability")
)
SPEC_METHODS: frozenset[str] = frozenset(
    {"/vmmgr.v1.VMService/CreateVM", "/vmmgr.v1.VMService/ExplainPlacement"}
)
OPERATION_ID_METHODS: frozenset[str] = frozenset(
    f"/vmmgr.v1.OperationService/{m}"
    for m in ("GetOperation", "WaitOperation", "CancelOperation", "WatchOperation")
)
LIST_VMS = "/vmmgr.v1.VMService/ListVMs"
LIST_OPERATIONS = "/vmmgr.v1.OperationService/ListOperations"
CREATE_VM = "/vmmgr.v1.VMService/CreateVM"


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def required_role(method: str) -> Role | None:
    """The least role ``method`` needs; None for a method the table does not know."""
    return PERMISSIONS.get(method)


def allows(role: Role, method: str) -> bool:
    need = PERMISSIONS.get(method)
    return need is not None and RANK[role] >= RANK[need]


def short_name(method: str) -> str:
    """"/vmmgr.v1.VMService/CreateVM" -> "VMService.CreateVM" (audit rows, messages)."""
    service, _, name = method.strip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"
