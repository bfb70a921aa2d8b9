"""Interfaces the core needs for device side effects (implemented in drivers/devices).

``DeviceAgent`` is the host-agent role: what only the host itself can do (NVML, MIG, FPGA
programming, mdev sysfs). ``drivers.devices.agent_local.LocalDeviceAgent`` implements it in
process; the gRPC HostAgentService will serve the same calls remotely. Arguments and results
are plain dataclasses from ``vmmgr.devices.model`` so they map one-to-one to the protos.
A host without an agent still works from libvirt node devices alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmmgr.devices.model import (
    FpgaProfile,
    FpgaProgramResult,
    GpuFacts,
    HostInventory,
    MdevInstance,
    MdevRecord,
    MigFacts,
    MigPlacement,
)


class MdevBackend(Protocol):
    """Creates and removes mediated devices one way (sysfs or libvirt nodedev)."""

    name: str  # "sysfs" | "libvirt"

    def create(self, parent: str, type_id: str, uuid: str) -> None: ...
    def remove(self, uuid: str) -> None: ...
    def list(self) -> list[MdevInstance]: ...


class DeviceAgent(Protocol):
    host: str

    def inventory(self) -> HostInventory:
        """libvirt node devices + sysfs + NVML facts of this host."""
        ...

    def gpu_facts(self) -> list[GpuFacts]:
        """NVML facts per NVIDIA GPU; [] when NVML is not available here."""
        ...

    def apply_mig_geometry(self, gpu: str, geometry: Sequence[MigPlacement]) -> MigFacts:
        """Make the GPU's instances exactly ``geometry`` (kept instances stay untouched).

        Destroying anything needs an idle GPU: FailedPrecondition when processes run or vGPUs
        are active. All or nothing: on failure the previous geometry is restored.
        """
        ...

    def set_mig_mode(self, gpu: str, enabled: bool) -> MigFacts:
        """Request MIG mode; ``pending`` differs from ``enabled`` until the GPU is reset."""
        ...

    def program_fpga(self, device: str, profile: FpgaProfile) -> FpgaProgramResult:
        """Verify the bitstream's sha256 (FailedPrecondition on mismatch, nothing run), then
        run the profile's command for the device."""
        ...

    def create_mdev(self, parent: str, type_id: str, uuid: str | None = None) -> MdevRecord: ...

    def remove_mdev(self, uuid: str) -> None: ...
