"""HostAgentService servicer: the host-agent role of vmmgrd, serving a DeviceAgent over gRPC.

FPGA programming never takes a command or a bitstream path from the network: the request names
a profile, resolved against the profiles configured on this host (vmmgrd config
``[fpga_profiles.NAME]``). The caller may send the sha256 it expects that profile to have; a
disagreement between the controller's and the agent's configs is FAILED_PRECONDITION and nothing
runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeAlias

import grpc

from vmmgr.api import agent_convert as conv
from vmmgr.api.errors import servicer
from vmmgr.devices.model import FpgaProfile
from vmmgr.devices.ports import DeviceAgent
from vmmgr.errors import FailedPrecondition, InvalidArgument, NotFound
from vmmgr.v1 import agent_pb2, agent_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext
FpgaProfiles: TypeAlias = Mapping[str, FpgaProfile] | Callable[[], Mapping[str, FpgaProfile]]


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    return value


@servicer
class HostAgentServicer(agent_pb2_grpc.HostAgentServiceServicer):
    """``started_at`` is epoch seconds (``time.time()``) of the daemon's start; ``fpga_profiles``
    a mapping, or a callable returning one (so a config reload is seen without a restart)."""

    def __init__(
        self,
        agent: DeviceAgent,
        host_uuid_fn: Callable[[], str],
        started_at: float,
        *,
        fpga_profiles: FpgaProfiles | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.host_uuid_fn = host_uuid_fn
        self.started_at = started_at
        self._profiles: FpgaProfiles = fpga_profiles if fpga_profiles is not None else {}
        self._clock = clock

    def _fpga_profile(self, name: str) -> FpgaProfile:
        profiles = self._profiles() if callable(self._profiles) else self._profiles
        profile = profiles.get(_required(name, "profile"))
        if profile is None:
            raise NotFound(
                f"no FPGA profile {name!r} configured on host {self.agent.host}",
                field="profile",
            )
        return profile

    def GetInventory(
        self, request: agent_pb2.GetInventoryRequest, context: Ctx
    ) -> agent_pb2.GetInventoryResponse:
        return conv.inventory_pb(self.agent.inventory())

    def GetGpuFacts(
        self, request: agent_pb2.GetGpuFactsRequest, context: Ctx
    ) -> agent_pb2.GetGpuFactsResponse:
        return agent_pb2.GetGpuFactsResponse(
            gpus=[conv.gpu_facts_pb(g) for g in self.agent.gpu_facts()]
        )

    def ConfigureMig(
        self, request: agent_pb2.ConfigureMigRequest, context: Ctx
    ) -> agent_pb2.ConfigureMigResponse:
        address = _required(request.address, "address")
        facts = self.agent.apply_mig_geometry(address, conv.geometry_from_request(request))
        return agent_pb2.ConfigureMigResponse(mig=conv.mig_info(facts), state=conv.mig_state(facts))

    def SetMigMode(
        self, request: agent_pb2.SetMigModeRequest, context: Ctx
    ) -> agent_pb2.SetMigModeResponse:
        address = _required(request.address, "address")
        facts = self.agent.set_mig_mode(address, request.enabled)
        return agent_pb2.SetMigModeResponse(state=conv.mig_state(facts))

    def ProgramFpga(
        self, request: agent_pb2.ProgramFpgaRequest, context: Ctx
    ) -> agent_pb2.ProgramFpgaResponse:
        address = _required(request.address, "address")
        profile = self._fpga_profile(request.profile)
        expected = request.expected_sha256.lower()
        if expected and expected != profile.sha256.lower():
            raise FailedPrecondition(
                f"FPGA profile {profile.name} on host {self.agent.host} names bitstream sha256 "
                f"{profile.sha256.lower()}, the caller expects {expected}; not programming",
                field="expected_sha256",
            )
        return conv.fpga_result_pb(self.agent.program_fpga(address, profile))

    def CreateMdev(
        self, request: agent_pb2.CreateMdevRequest, context: Ctx
    ) -> agent_pb2.CreateMdevResponse:
        record = self.agent.create_mdev(
            _required(request.parent, "parent"),
            _required(request.type_id, "type_id"),
            request.uuid if request.HasField("uuid") else None,
        )
        return agent_pb2.CreateMdevResponse(mdev=conv.mdev_record_pb(record))

    def RemoveMdev(
        self, request: agent_pb2.RemoveMdevRequest, context: Ctx
    ) -> agent_pb2.RemoveMdevResponse:
        self.agent.remove_mdev(_required(request.uuid, "uuid"))
        return agent_pb2.RemoveMdevResponse()

    def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, context: Ctx
    ) -> agent_pb2.HeartbeatResponse:
        return agent_pb2.HeartbeatResponse(
            host_uuid=self.host_uuid_fn(),
            uptime_seconds=max(0.0, self._clock() - self.started_at),
            host=self.agent.host,
        )
