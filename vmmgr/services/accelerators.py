"""The accelerator part of creating and deleting a VM.

The scheduler chooses the host and its devices; this module turns that choice into store claims
(the database refuses double whole-device claims), creates vGPU mdevs and programs FPGAs through
the host agent on the caller's undo stack, and gives everything back on delete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from vmmgr.devices.catalog import parse_model
from vmmgr.devices.model import FpgaProfile
from vmmgr.devices.ports import DeviceAgent
from vmmgr.errors import FailedPrecondition, NotFound
from vmmgr.ports import MdevHostdevSpec, PciHostdevSpec
from vmmgr.requests import VmCreate
from vmmgr.scheduler.results import Placement
from vmmgr.snapshot import ClusterSnapshot, DeviceKind, DeviceSnap
from vmmgr.state import Store, repo
from vmmgr.state.models import ClaimKind, DeviceClaim
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)


def check_known(
    req: VmCreate, snap: ClusterSnapshot, fpga_profiles: dict[str, FpgaProfile]
) -> None:
    """Refuse models, types and profiles no host has, naming the field (before any placement)."""
    devices = [d for h in snap.hosts for d in h.devices]
    for i, gpu in enumerate(req.gpus):
        q = parse_model(gpu.model, field=f"spec.gpus[{i}].model")
        if not any(
            d.kind == DeviceKind.GPU and q.matches(d.model, d.vendor_id, d.product_id)
            for d in devices
        ):
            have = sorted({d.model for d in devices if d.kind == DeviceKind.GPU})
            raise FailedPrecondition(
                f"no GPU of model {gpu.model!r} in the cluster "
                f"(present: {', '.join(have) or 'none'})",
                field=f"spec.gpus[{i}].model",
            )
    if req.vgpu_type:
        want = req.vgpu_type.casefold()
        if not any(
            want in (t.name.casefold(), t.display_name.casefold())
            for d in devices
            for t in d.mdev_types
        ):
            raise FailedPrecondition(
                f"no GPU offers vGPU type {req.vgpu_type!r}", field="spec.vgpu_type"
            )
    if req.mig_profile:
        if not any(p.name == req.mig_profile for d in devices if d.mig for p in d.mig.profiles):
            raise FailedPrecondition(
                f"no GPU offers MIG profile {req.mig_profile!r}", field="spec.mig_profile"
            )
        raise FailedPrecondition(
            "attaching a MIG instance to a VM needs NVIDIA's vGPU host driver with MIG-backed "
            "vGPU types; that attach is planned (MIG geometry can be planned and applied with "
            "the DeviceService now)",
            field="spec.mig_profile",
        )
    for i, fpga in enumerate(req.fpgas):
        q = parse_model(fpga.model, field=f"spec.fpgas[{i}].model")
        if not any(
            d.kind == DeviceKind.FPGA and q.matches(d.model, d.vendor_id, d.product_id)
            for d in devices
        ):
            raise FailedPrecondition(
                f"no FPGA of model {fpga.model!r} in the cluster", field=f"spec.fpgas[{i}].model"
            )
        if fpga.profile and fpga.profile not in fpga_profiles:
            raise NotFound(
                f"FPGA profile {fpga.profile!r} is not configured (known: "
                f"{', '.join(sorted(fpga_profiles)) or 'none'})",
                field=f"spec.fpgas[{i}].profile",
            )
    if len(req.fpgas) > 1:
        raise FailedPrecondition("one FPGA request (with a count) per VM", field="spec.fpgas")


def claim_requests(placement: Placement, snap: ClusterSnapshot) -> list[repo.ClaimRequest]:
    """Store claims for a placement. Whole devices take their IOMMU group companions too
    (VFIO hands out whole groups, e.g. a GPU and its audio function)."""
    host = next(h for h in snap.hosts if h.name == placement.host)
    by_id = {d.id: d for d in host.devices}
    out: list[repo.ClaimRequest] = []
    seen: set[str] = set()
    for c in placement.devices:
        if c.kind in ("gpu", "fpga"):
            dev = by_id[c.device_id]
            for member in [dev, *_companions(dev, host.devices)]:
                if member.id not in seen:
                    seen.add(member.id)
                    out.append(
                        repo.ClaimRequest(
                            member.id, kind=ClaimKind.PCI.value, original_driver=member.driver or ""
                        )
                    )
        elif c.kind == "vgpu":
            out.append(
                repo.ClaimRequest(c.device_id, kind=ClaimKind.MDEV.value, mdev_type=c.profile or "")
            )
        elif c.kind == "mig":
            out.append(
                repo.ClaimRequest(
                    c.device_id, kind=ClaimKind.MIG.value, mig_profile=c.profile or ""
                )
            )
    return out


def _companions(dev: DeviceSnap, devices: Sequence[DeviceSnap]) -> list[DeviceSnap]:
    if dev.iommu_group is None:
        return []
    return [d for d in devices if d.iommu_group == dev.iommu_group and d.id != dev.id]


def numa_node(placement: Placement, snap: ClusterSnapshot) -> int | None:
    """The host cell to bind vCPUs and memory to: the scheduler's, else the devices' own."""
    if placement.numa_cell is not None:
        return placement.numa_cell
    host = next(h for h in snap.hosts if h.name == placement.host)
    cells = {c.id for c in host.numa_cells if c.cpus > 0}
    nodes = {c.numa_node for c in placement.devices if c.numa_node is not None}
    if len(nodes) == 1 and len(cells) > 1 and (node := nodes.pop()) in cells:
        return node
    return None


@dataclass(frozen=True, slots=True)
class Attached:
    pci: tuple[PciHostdevSpec, ...] = ()
    mdev: tuple[MdevHostdevSpec, ...] = ()


class Accelerators:
    def __init__(self, store: Store, fpga_profiles: dict[str, FpgaProfile]) -> None:
        self.store = store
        self.fpga_profiles = fpga_profiles

    def claims(self, vm_id: str) -> list[DeviceClaim]:
        with self.store.read_session() as s:
            return repo.list_claims(s, vm_id=vm_id)

    def prepare(
        self, vm_id: str, host: str, agent: DeviceAgent | None, undo: UndoStack
    ) -> Attached:
        """Create the VM's vGPU mdevs (recorded for later undo) and list its hostdevs."""
        claims = self.claims(vm_id)
        if not claims:
            return Attached()
        with self.store.read_session() as s:
            addresses = {c.device_id: repo.get_device(s, c.device_id).address for c in claims}
        pci = tuple(
            PciHostdevSpec(addresses[c.device_id]) for c in claims if c.kind == ClaimKind.PCI.value
        )
        mdevs: list[MdevHostdevSpec] = []
        for c in claims:
            if c.kind != ClaimKind.MDEV.value:
                continue
            if agent is None:
                raise FailedPrecondition(f"host {host} has no device agent; vGPUs need one")
            rec = agent.create_mdev(addresses[c.device_id], c.mdev_type)
            undo.push(partial(agent.remove_mdev, rec.uuid), f"remove mdev {rec.uuid}")
            with self.store.session() as s:
                repo.update_claim(
                    s, c.id, mdev_uuid=rec.uuid, original_driver=rec.parent_driver or ""
                )
            mdevs.append(MdevHostdevSpec(rec.uuid))
        return Attached(pci, tuple(mdevs))

    def program_fpgas(self, vm_id: str, req: VmCreate, agent: DeviceAgent | None) -> None:
        """Run the FPGA profile's program step on each claimed FPGA before the VM starts."""
        profile = req.fpgas[0].profile if req.fpgas else ""
        if not profile:
            return
        if agent is None:
            raise FailedPrecondition("programming an FPGA needs the host's device agent")
        with self.store.read_session() as s:
            for c in repo.list_claims(s, vm_id=vm_id):
                dev = repo.get_device(s, c.device_id)
                if dev.kind == DeviceKind.FPGA.value:
                    agent.program_fpga(dev.address, self.fpga_profiles[profile])

    def release(self, vm_id: str, agent: DeviceAgent | None) -> None:
        """Remove the VM's mdevs (the claims go with the VM row)."""
        for c in self.claims(vm_id):
            if c.kind == ClaimKind.MDEV.value and c.mdev_uuid:
                if agent is None:
                    raise FailedPrecondition(
                        f"cannot remove mdev {c.mdev_uuid}: the host has no device agent"
                    )
                try:
                    agent.remove_mdev(c.mdev_uuid)
                except NotFound:
                    log.info("mdev %s was already gone", c.mdev_uuid)
