"""VMService: proto <-> VMService use cases."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.errors import InvalidArgument
from vmmgr.migration import Step
from vmmgr.ports import LiveOptions
from vmmgr.services.groups import GroupService
from vmmgr.services.migrations import MigrateRequest, MigrationService
from vmmgr.services.vms import VMService
from vmmgr.v1 import vm_pb2, vm_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext


_MODES = {
    vm_pb2.MIGRATION_MODE_UNSPECIFIED: "live",
    vm_pb2.MIGRATION_MODE_LIVE: "live",
    vm_pb2.MIGRATION_MODE_COLD: "cold",
}
_MODE_PB = {
    "live": vm_pb2.MIGRATION_MODE_LIVE,
    "cold": vm_pb2.MIGRATION_MODE_COLD,
    "blocked": vm_pb2.MIGRATION_MODE_BLOCKED,
}


def parse_selectors(selectors: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for i, sel in enumerate(selectors):
        key, sep, value = sel.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label_selector[{i}]", "must be KEY=VALUE")
        labels[key] = value
    return labels


@servicer
class VMServicer(vm_pb2_grpc.VMServiceServicer):
    def __init__(self, vms: VMService, groups: GroupService, migrations: MigrationService) -> None:
        self.vms = vms
        self.groups = groups
        self.migrations = migrations

    def _vm(self, row: object) -> vm_pb2.VM:
        from vmmgr.state.models import VM

        assert isinstance(row, VM)
        return convert.vm(row, volumes=[v.path for v in self.vms.volumes(row.id)])

    def CreateVM(self, request: vm_pb2.CreateVMRequest, context: Ctx) -> vm_pb2.CreateVMResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "is required")
        op = self.vms.create(
            convert.vm_create_from_proto(request.spec), request_id=request.request_id
        )
        return vm_pb2.CreateVMResponse(operation=convert.operation(op))

    def GetVM(self, request: vm_pb2.GetVMRequest, context: Ctx) -> vm_pb2.GetVMResponse:
        return vm_pb2.GetVMResponse(vm=self._vm(self.vms.get(request.vm, request.project)))

    def ListVMs(self, request: vm_pb2.ListVMsRequest, context: Ctx) -> vm_pb2.ListVMsResponse:
        if request.page_size < 0 or request.page_size > 1000:
            raise InvalidArgument("page_size", "must be between 0 and 1000")
        state = convert.VM_STATE_NAMES.get(request.state, "")
        if request.state and not state:
            raise InvalidArgument("state", f"unknown state {request.state}")
        rows, token = self.vms.list_vms(
            host=request.host,
            state=state,
            project=request.project,
            labels=parse_selectors(list(request.label_selector)),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return vm_pb2.ListVMsResponse(vms=[convert.vm(r) for r in rows], next_page_token=token)

    def DeleteVM(self, request: vm_pb2.DeleteVMRequest, context: Ctx) -> vm_pb2.DeleteVMResponse:
        op = self.vms.delete(request.vm, request.project)
        return vm_pb2.DeleteVMResponse(operation=convert.operation(op))

    def StartVM(self, request: vm_pb2.StartVMRequest, context: Ctx) -> vm_pb2.StartVMResponse:
        return vm_pb2.StartVMResponse(vm=self._vm(self.vms.start(request.vm, request.project)))

    def StopVM(self, request: vm_pb2.StopVMRequest, context: Ctx) -> vm_pb2.StopVMResponse:
        res = self.vms.stop(
            request.vm, request.project, timeout_s=request.timeout_seconds, force=request.force
        )
        return vm_pb2.StopVMResponse(vm=self._vm(res.vm), forced=res.forced)

    def RebootVM(self, request: vm_pb2.RebootVMRequest, context: Ctx) -> vm_pb2.RebootVMResponse:
        return vm_pb2.RebootVMResponse(vm=self._vm(self.vms.reboot(request.vm, request.project)))

    def SuspendVM(self, request: vm_pb2.SuspendVMRequest, context: Ctx) -> vm_pb2.SuspendVMResponse:
        return vm_pb2.SuspendVMResponse(vm=self._vm(self.vms.suspend(request.vm, request.project)))

    def ResumeVM(self, request: vm_pb2.ResumeVMRequest, context: Ctx) -> vm_pb2.ResumeVMResponse:
        return vm_pb2.ResumeVMResponse(vm=self._vm(self.vms.resume(request.vm, request.project)))

    def ExplainPlacement(
        self, request: vm_pb2.ExplainPlacementRequest, context: Ctx
    ) -> vm_pb2.ExplainPlacementResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "is required")
        return convert.explanation(self.vms.explain(convert.vm_create_from_proto(request.spec)))

    def MigrateVM(self, request: vm_pb2.MigrateVMRequest, context: Ctx) -> vm_pb2.MigrateVMResponse:
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode", "must be LIVE or COLD")
        schedule = tuple(
            Step(after_s=s.after_seconds, max_downtime_ms=s.max_downtime_ms, action=s.action)  # type: ignore[arg-type]
            for s in request.schedule
        )
        options = LiveOptions(
            max_downtime_ms=request.max_downtime_ms,
            bandwidth_mib_s=request.bandwidth_mib_s,
            auto_converge=request.auto_converge,
            allow_postcopy=request.allow_post_copy,
            copy_storage=request.copy_storage,
            schedule=schedule,
        )
        op = self.migrations.migrate(
            request.vm, request.project, MigrateRequest(mode, request.target_host, options)
        )
        return vm_pb2.MigrateVMResponse(operation=convert.operation(op))

    def GetMigratability(
        self, request: vm_pb2.GetMigratabilityRequest, context: Ctx
    ) -> vm_pb2.GetMigratabilityResponse:
        verdict = self.migrations.migratability(request.vm, request.project)
        return vm_pb2.GetMigratabilityResponse(mode=_MODE_PB[verdict.mode], reason=verdict.reason)

    def CreatePlacementGroup(
        self, request: vm_pb2.CreatePlacementGroupRequest, context: Ctx
    ) -> vm_pb2.CreatePlacementGroupResponse:
        g = request.group
        row = self.groups.create(g.name, g.policy or "anti-affinity", g.hard)
        return vm_pb2.CreatePlacementGroupResponse(
            group=vm_pb2.PlacementGroup(name=row.name, policy=row.policy, hard=row.hard)
        )

    def ListPlacementGroups(
        self, request: vm_pb2.ListPlacementGroupsRequest, context: Ctx
    ) -> vm_pb2.ListPlacementGroupsResponse:
        return vm_pb2.ListPlacementGroupsResponse(
            groups=[
                vm_pb2.PlacementGroup(name=g.name, policy=g.policy, hard=g.hard, members=members)
                for g, members in self.groups.list_groups()
            ]
        )

    def DeletePlacementGroup(
        self, request: vm_pb2.DeletePlacementGroupRequest, context: Ctx
    ) -> vm_pb2.DeletePlacementGroupResponse:
        self.groups.delete(request.name)
        return vm_pb2.DeletePlacementGroupResponse()
