"""The host agent over gRPC: a DeviceAgent that asks a host's vmmgrd (HostAgentService).

gRPC failures come back as vmmgr errors: the agent's own errors keep their class, message and
field (trailing metadata ``vmmgr-error-code`` / ``vmmgr-error-field``); an agent that cannot be
reached, or does not answer within the deadline, is ``Unavailable``.

FPGA programming sends only the profile's name and sha256: the agent programs with its own
locally configured profile of that name (never a command from the network) and refuses when its
sha256 differs from the one the controller expects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from vmmgr import errors
from vmmgr.api import agent_convert as conv
from vmmgr.api.errors import MD_CODE, MD_DETAIL_PREFIX, MD_FIELD
from vmmgr.devices.model import (
    FpgaProfile,
    FpgaProgramResult,
    GpuFacts,
    HostInventory,
    MdevRecord,
    MigFacts,
    MigPlacement,
)
from vmmgr.devices.ports import DeviceAgent
from vmmgr.v1 import agent_pb2, agent_pb2_grpc

R = TypeVar("R")

# Status code -> vmmgr error class for errors the agent raised on purpose.
_ERRORS: dict[grpc.StatusCode, type[errors.VmmgrError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}
# Raised by the transport, not by the agent: the agent is not reachable (in time).
_TRANSPORT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def error_from_rpc(exc: grpc.RpcError, *, host: str, address: str) -> errors.VmmgrError:
    """The vmmgr error a failed HostAgentService call stands for."""
    call: Any = exc  # grpc.Call methods are on the concrete error (a grpc.Call too)
    code: grpc.StatusCode = call.code()
    text: str = call.details() or ""
    md = {k: v for k, v in (call.trailing_metadata() or ()) if isinstance(v, str)}
    field = md.get(MD_FIELD)
    if field and text.startswith(f"{field}: "):
        text = text[len(field) + 2 :]  # the server's str(exc) prefixed the field
    details = {
        k[len(MD_DETAIL_PREFIX) :]: v for k, v in md.items() if k.startswith(MD_DETAIL_PREFIX)
    }
    if code in _TRANSPORT and MD_CODE not in md:
        return errors.Unavailable(
            f"host agent of {host} at {address} unreachable ({code.name}): {text}",
            details={"host": host},
        )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(field or "request", text, details=details)
    cls = _ERRORS.get(code, errors.DriverError)
    return cls(text, field=field, details=details)


class RemoteDeviceAgent:
    """``credentials`` None is an insecure channel (for now); pass grpc.ssl_channel_credentials
    for TLS. ``metadata`` goes with every call (e.g. ``[("authorization", "Bearer T")]``)."""

    def __init__(
        self,
        host: str,
        address: str,
        *,
        timeout_s: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.host = host
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = tuple(metadata)
        self._channel = (
            grpc.secure_channel(address, credentials, options=list(options))
            if credentials is not None
            else grpc.insecure_channel(address, options=list(options))
        )
        self._stub = agent_pb2_grpc.HostAgentServiceStub(self._channel)
        self.last_host_uuid: str | None = None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RemoteDeviceAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., R], request: Any, timeout_s: float | None = None) -> R:
        try:
            return method(
                request, timeout=timeout_s or self.timeout_s, metadata=self._metadata or None
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, host=self.host, address=self.address) from None

    # ------------------------------------------------------------------ DeviceAgent

    def inventory(self) -> HostInventory:
        """The agent's inventory under the controller's name for the host."""
        resp = self._call(self._stub.GetInventory, agent_pb2.GetInventoryRequest())
        return dataclasses.replace(conv.inventory(resp), host=self.host)

    def gpu_facts(self) -> list[GpuFacts]:
        resp = self._call(self._stub.GetGpuFacts, agent_pb2.GetGpuFactsRequest())
        return conv.gpu_facts_list(resp.gpus)

    def apply_mig_geometry(self, gpu: str, geometry: Sequence[MigPlacement]) -> MigFacts:
        req = agent_pb2.ConfigureMigRequest(
            address=gpu, placements=[conv.placement(p) for p in geometry]
        )
        return conv.mig_facts(self._call(self._stub.ConfigureMig, req).state)

    def set_mig_mode(self, gpu: str, enabled: bool) -> MigFacts:
        req = agent_pb2.SetMigModeRequest(address=gpu, enabled=enabled)
        return conv.mig_facts(self._call(self._stub.SetMigMode, req).state)

    def program_fpga(self, device: str, profile: FpgaProfile) -> FpgaProgramResult:
        """Programs with the agent's profile named ``profile.name``; the local ``command`` and
        ``bitstream`` are not sent (the agent's config decides), ``sha256`` must agree."""
        req = agent_pb2.ProgramFpgaRequest(
            address=device, profile=profile.name, expected_sha256=profile.sha256
        )
        # programming may take the profile's whole timeout; leave the agent room to report it
        timeout = max(self.timeout_s, profile.timeout_s + 30.0)
        return conv.fpga_result(self._call(self._stub.ProgramFpga, req, timeout))

    def create_mdev(self, parent: str, type_id: str, uuid: str | None = None) -> MdevRecord:
        req = agent_pb2.CreateMdevRequest(parent=parent, type_id=type_id, uuid=uuid)
        return conv.mdev_record(self._call(self._stub.CreateMdev, req).mdev)

    def remove_mdev(self, uuid: str) -> None:
        self._call(self._stub.RemoveMdev, agent_pb2.RemoveMdevRequest(uuid=uuid))

    # ------------------------------------------------------------------ liveness

    def heartbeat(self, timeout_s: float | None = None) -> float | None:
        """The agent's uptime in seconds, or None when it cannot be reached in time.

        Other failures (e.g. PermissionDenied from a misconfigured token) raise: the agent is
        up but refuses, which a recovery policy must not mistake for a dead host.
        """
        try:
            resp = self._call(self._stub.Heartbeat, agent_pb2.HeartbeatRequest(), timeout_s)
        except errors.Unavailable:
            return None
        self.last_host_uuid = resp.host_uuid or None
        return resp.uptime_seconds


def _conforms(agent: RemoteDeviceAgent) -> DeviceAgent:
    return agent  # mypy checks RemoteDeviceAgent against the DeviceAgent protocol
