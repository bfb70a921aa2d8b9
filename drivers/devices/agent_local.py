"""The host agent, in process: NVML, MIG, FPGA programming and mdevs on this machine.

Implements ``vmmgr.devices.ports.DeviceAgent``; the gRPC HostAgentService serves it remotely.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drivers.devices.fpga import FpgaProgrammer
from drivers.devices.inventory import scan_inventory
from drivers.devices.mdev import MdevManager, SysfsMdevBackend
from drivers.devices.mig import NvmlMig
from drivers.devices.nvml import NvmlDriver
from drivers.devices.sysfs import Sysfs
from vmmgr.devices.model import (
    FpgaProfile,
    FpgaProgramResult,
    GpuFacts,
    HostInventory,
    MdevRecord,
    MigFacts,
    MigPlacement,
    normalise_address,
)
from vmmgr.devices.ports import DeviceAgent, MdevBackend
from vmmgr.errors import FailedPrecondition, NotFound


class LocalDeviceAgent:
    def __init__(
        self,
        host: str,
        *,
        libvirt_source: str | Any = "qemu:///system",
        sysfs_root: str | Path = "/",
        nvml: NvmlDriver | None = None,
        mdev_backend: MdevBackend | None = None,
        programmer: FpgaProgrammer | None = None,
    ) -> None:
        self.host = host
        self._libvirt = libvirt_source  # URI, open virConnect, or a HostConnection
        self.sysfs = Sysfs(sysfs_root)
        self.nvml = nvml
        self.mdevs = MdevManager(mdev_backend or SysfsMdevBackend(sysfs_root))
        self.programmer = programmer or FpgaProgrammer()

    def inventory(self) -> HostInventory:
        return scan_inventory(
            self._libvirt, host=self.host, sysfs_root=self.sysfs.root, nvml=self.nvml
        )

    def gpu_facts(self) -> list[GpuFacts]:
        return self.nvml.gpu_facts() if self.nvml is not None else []

    def _mig(self) -> NvmlMig:
        if self.nvml is None:
            raise FailedPrecondition(f"host {self.host} has no NVML: MIG cannot be managed")
        return NvmlMig(self.nvml)

    def apply_mig_geometry(self, gpu: str, geometry: Sequence[MigPlacement]) -> MigFacts:
        return self._mig().apply(gpu, geometry)

    def set_mig_mode(self, gpu: str, enabled: bool) -> MigFacts:
        return self._mig().set_mode(gpu, enabled)

    def program_fpga(self, device: str, profile: FpgaProfile) -> FpgaProgramResult:
        address = normalise_address(device, field="device")
        if not self.sysfs.exists(address):
            raise NotFound(f"no PCI device {address} on host {self.host}")
        return self.programmer.program(address, profile)

    def create_mdev(self, parent: str, type_id: str, uuid: str | None = None) -> MdevRecord:
        facts = self.sysfs.pci_facts(parent)
        return self.mdevs.create(
            parent, type_id, uuid, parent_driver=facts.driver if facts else None
        )

    def remove_mdev(self, uuid: str) -> None:
        self.mdevs.remove(uuid)


def _conforms(agent: LocalDeviceAgent) -> DeviceAgent:
    return agent  # mypy checks LocalDeviceAgent against the DeviceAgent protocol
