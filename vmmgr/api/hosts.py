"""HostService servicer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.errors import InvalidArgument
from vmmgr.services.hosts import HostService
from vmmgr.services.migrations import MigrationService
from vmmgr.services.vms import VMService
from vmmgr.state.models import Host
from vmmgr.v1 import host_pb2, host_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext


@servicer
class HostServicer(host_pb2_grpc.HostServiceServicer):
    def __init__(self, hosts: HostService, vms: VMService, migrations: MigrationService) -> None:
        self.hosts = hosts
        self.vms = vms
        self.migrations = migrations

    def _host(self, h: Host, usage: dict[str, tuple[int, int, int]] | None = None) -> host_pb2.Host:
        vms, vcpus, memory = (usage if usage is not None else self.vms.usage_by_host()).get(
            h.name, (0, 0, 0)
        )
        return convert.host(h, vm_count=vms, used_vcpus=vcpus, used_memory_mib=memory)

    def RegisterHost(
        self, request: host_pb2.RegisterHostRequest, context: Ctx
    ) -> host_pb2.RegisterHostResponse:
        h = self.hosts.register(
            request.name,
            request.uri,
            tags=list(request.tags),
            pool=request.pool,
            agent_address=request.agent_address,
        )
        return host_pb2.RegisterHostResponse(host=self._host(h))

    def GetHost(self, request: host_pb2.GetHostRequest, context: Ctx) -> host_pb2.GetHostResponse:
        return host_pb2.GetHostResponse(host=self._host(self.hosts.get(request.name)))

    def ListHosts(
        self, request: host_pb2.ListHostsRequest, context: Ctx
    ) -> host_pb2.ListHostsResponse:
        state = convert.HOST_STATE_NAMES.get(request.state, "")
        if request.state and not state:
            raise InvalidArgument("state", f"unknown state {request.state}")
        usage = self.vms.usage_by_host()
        return host_pb2.ListHostsResponse(
            hosts=[self._host(h, usage) for h in self.hosts.list_hosts(state)]
        )

    def UpdateHost(
        self, request: host_pb2.UpdateHostRequest, context: Ctx
    ) -> host_pb2.UpdateHostResponse:
        h = self.hosts.update(
            request.name,
            tags=list(request.tags) if request.update_tags else None,
            pool=request.pool,
            agent_address=request.agent_address,
        )
        return host_pb2.UpdateHostResponse(host=self._host(h))

    def RemoveHost(
        self, request: host_pb2.RemoveHostRequest, context: Ctx
    ) -> host_pb2.RemoveHostResponse:
        self.hosts.remove(request.name)
        return host_pb2.RemoveHostResponse()

    def ListForeignDomains(
        self, request: host_pb2.ListForeignDomainsRequest, context: Ctx
    ) -> host_pb2.ListForeignDomainsResponse:
        if not request.host:
            raise InvalidArgument("host", "is required")
        doms = self.hosts.foreign_domains(request.host)
        return host_pb2.ListForeignDomainsResponse(
            domains=[convert.foreign_domain(d) for d in doms]
        )

    def EnterMaintenance(
        self, request: host_pb2.EnterMaintenanceRequest, context: Ctx
    ) -> host_pb2.EnterMaintenanceResponse:
        plan, op = self.migrations.enter_maintenance(
            request.name, dry_run=request.dry_run, stop_blocked=request.stop_blocked
        )
        resp = host_pb2.EnterMaintenanceResponse(
            plan=[
                host_pb2.EvacuationStep(
                    vm_id=s.vm_id,
                    vm_name=s.vm_name,
                    action=s.action,
                    target_host=s.target_host,
                    reason=s.reason,
                )
                for s in plan.steps
            ]
        )
        if op is not None:
            resp.operation.CopyFrom(convert.operation(op))
        return resp

    def ExitMaintenance(
        self, request: host_pb2.ExitMaintenanceRequest, context: Ctx
    ) -> host_pb2.ExitMaintenanceResponse:
        row, op = self.migrations.exit_maintenance(request.name, request.move_back)
        resp = host_pb2.ExitMaintenanceResponse(host=self._host(row))
        if op is not None:
            resp.operation.CopyFrom(convert.operation(op))
        return resp
