"""Devices: inventory per host (libvirt node devices, plus the host agent's NVML facts where a
host has an agent), health with taints and events, telemetry series, MIG geometry.

A host without an agent is inventoried from libvirt alone: no NVML telemetry, health only from
presence. Decisions (health, MIG geometry) are the pure functions of vmmgr.devices.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict

from vmmgr.devices.health import evaluate_host_health
from vmmgr.devices.inventory import inventory_from_xml
from vmmgr.devices.mdev import DeclaredMdev, reconcile_mdevs
from vmmgr.devices.mig import (
    MigDemand,
    MigPlan,
    ensure_mig_reconfigurable,
    mig_gpu_from_snap,
    plan_geometry,
)
from vmmgr.devices.model import GpuFacts, HostInventory, MigFacts, MigPlacement, PciDevice
from vmmgr.devices.ports import DeviceAgent
from vmmgr.errors import FailedPrecondition, InvalidArgument
from vmmgr.services.connections import ConnectionManager
from vmmgr.services.events import EventBus
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.snapshot import DeviceHealth, DeviceKind
from vmmgr.state import Store, repo
from vmmgr.state.models import ClaimKind, Device, DeviceSample, Host, Operation
from vmmgr.state.snapshot_builder import build_snapshot
from vmmgr.state.types import utcnow

log = logging.getLogger(__name__)

AgentFactory = Callable[[Host], DeviceAgent | None]
SAMPLES_KEPT = 1440  # a day of one-minute samples per device


def device_row(host: str, dev: PciDevice) -> Device:
    return Device(
        id=repo.device_id(host, dev.address),
        host=host,
        address=dev.address,
        kind=dev.kind.value,
        vendor_id=dev.vendor_id,
        product_id=dev.product_id,
        vendor_name=dev.vendor_name,
        product_name=dev.product_name,
        model=dev.model,
        class_code=dev.pci_class,
        driver=dev.driver or "",
        numa_node=dev.numa_node,
        iommu_group=dev.iommu_group,
        iommu_group_members=list(dev.iommu_group_members),
        sriov={
            "is_pf": bool(dev.vfs),
            "totalvfs": dev.max_vfs or 0,
            "pf": dev.pf,
            "vfs": list(dev.vfs),
        },
        mdev_types=[
            {
                "name": t.id,
                "display_name": t.name,
                "device_api": t.device_api,
                "available": t.available_instances,
                "max_instances": t.max_instances or t.available_instances,
            }
            for t in dev.mdev_types
        ],
        health=DeviceHealth.HEALTHY.value,
    )


def tracked(inv: HostInventory) -> list[PciDevice]:
    """Accelerators and the devices sharing an IOMMU group with one (passthrough takes the
    group); bridges never."""
    groups = {d.iommu_group for d in inv.accelerators if d.iommu_group is not None}
    return [
        d
        for d in inv.devices
        if d.kind is not DeviceKind.OTHER
        or (not d.is_bridge and d.iommu_group is not None and d.iommu_group in groups)
    ]


def mig_dict(m: MigFacts | None) -> dict[str, object]:
    if m is None or not m.profiles:
        return {}
    return {
        "enabled": bool(m.enabled),
        "pending": m.pending,
        "total_slices": max(p.slices for p in m.profiles),
        "profiles": [
            {
                "name": p.name,
                "slices": p.slices,
                "memory_mib": p.memory_mib,
                "max_instances": p.max_instances,
            }
            for p in m.profiles
        ],
        "instances": [i.profile for i in m.instances],
    }


def nvml_dict(g: GpuFacts) -> dict[str, object]:
    facts = asdict(g)
    facts.pop("mig", None)
    return facts


class DeviceService:
    def __init__(
        self,
        store: Store,
        conns: ConnectionManager,
        events: EventBus,
        ops: Operations,
        agent_for: AgentFactory,
    ) -> None:
        self.store = store
        self.conns = conns
        self.events = events
        self.ops = ops
        self._agent_for = agent_for
        self._pending: dict[str, threading.Timer] = {}
        self._pending_lock = threading.Lock()

    def agent(self, host: str) -> DeviceAgent | None:
        with self.store.read_session() as s:
            return self._agent_for(repo.get_host(s, host))

    # ------------------------------------------------------------------ inventory

    def rescan(self, host: str) -> list[Device]:
        """Read the host's devices, store them, re-evaluate health, record telemetry."""
        agent = self.agent(host)
        if agent is not None:
            inv = agent.inventory()
        else:
            inv = inventory_from_xml(host, self.conns.get(host).list_node_device_xml())
        if agent is not None:
            self._recreate_mdevs(host, inv, agent)
        rows = [device_row(host, d) for d in tracked(inv)]
        now = utcnow()
        with self.store.session() as s:
            before = {d.id: d for d in repo.list_devices(s, host=host, present_only=False)}
            sync = repo.upsert_devices(s, host, rows, now=now)
            previous = {
                i: DeviceHealth(d.health)
                for i, d in before.items()
                if d.present and d.kind != DeviceKind.OTHER.value
            }
            reasons = {i: list(d.health_reasons) for i, d in before.items()}
            results = evaluate_host_health(inv, previous, previous_reasons=reasons)
            for dev_id, res in results.items():
                manual = before.get(dev_id) is not None and any(
                    r.startswith("operator:") for r in before[dev_id].health_reasons
                )
                if not manual:
                    repo.set_device_health(s, dev_id, res.health.value, res.reasons)
            samples = []
            for g in inv.gpus:
                dev_id = repo.device_id(host, g.address)
                if dev_id not in results:
                    continue
                repo.update_device_telemetry(s, dev_id, nvml=nvml_dict(g), mig=mig_dict(g.mig))
                samples.append(
                    DeviceSample(
                        device_id=dev_id,
                        time=now,
                        gpu_util=g.utilization_gpu_pct,
                        mem_util=g.utilization_memory_pct,
                        memory_used_mib=g.memory_used_mib,
                        temperature_c=g.temperature_c,
                        power_w=g.power_mw / 1000 if g.power_mw is not None else None,
                    )
                )
            if samples:
                repo.append_device_samples(s, samples)
                repo.prune_device_samples(s, SAMPLES_KEPT)
            devices = repo.list_devices(s, host=host)
        for dev_id in sync.added:
            self.events.publish("device.added", dev_id, f"device {dev_id} found")
        for dev_id in sync.gone:
            self.events.publish(
                "device.gone", dev_id, f"device {dev_id} is no longer present", severity="warning"
            )
        for res in results.values():
            for ev in res.events:
                self.events.publish(
                    ev.kind,
                    ev.device_id,
                    f"device {ev.device_id}: {'; '.join(ev.reasons)}",
                    severity="warning" if ev.kind.endswith("tainted") else "info",
                    reasons="; ".join(ev.reasons),
                )
        return devices

    def _recreate_mdevs(self, host: str, inv: HostInventory, agent: DeviceAgent) -> None:
        """After a host reboot the VMs' vGPU mdevs are gone: make them again, same uuids."""
        with self.store.read_session() as s:
            declared = [
                DeclaredMdev(
                    uuid=c.mdev_uuid,
                    parent=repo.get_device(s, c.device_id).address,
                    type_id=c.mdev_type,
                    vm_id=c.vm_id,
                )
                for c in repo.list_claims(s, host=host)
                if c.kind == ClaimKind.MDEV.value and c.mdev_uuid
            ]
        for d in reconcile_mdevs(declared, inv.mdevs).recreate:
            agent.create_mdev(d.parent, d.type_id, d.uuid)
            self.events.publish(
                "device.mdev_recreated",
                f"{host}/{d.parent}",
                f"recreated mdev {d.uuid} ({d.type_id}) for vm {d.vm_id}",
                vm_id=d.vm_id or "",
            )

    def request_rescan(self, host: str, delay_s: float = 2.0) -> None:
        """A node device event: rescan soon, once per burst of events."""
        with self._pending_lock:
            if host in self._pending:
                return
            timer = threading.Timer(delay_s, self._rescan_pending, (host,))
            timer.daemon = True
            self._pending[host] = timer
        timer.start()

    def _rescan_pending(self, host: str) -> None:
        with self._pending_lock:
            self._pending.pop(host, None)
        try:
            self.rescan(host)
        except Exception as exc:  # a timer thread has nobody to raise to
            log.warning("device rescan of %s after a node device event failed: %s", host, exc)

    def rescan_all(self) -> None:
        for name in self.conns.names():
            try:
                self.rescan(name)
            except Exception as exc:  # one host's failure must not stop the others
                log.warning("device scan of %s failed: %s", name, exc)

    # ------------------------------------------------------------------ queries

    def list_devices(self, host: str = "", kind: str = "") -> list[Device]:
        with self.store.read_session() as s:
            return repo.list_devices(s, host=host or None, kind=kind or None)

    def get(self, dev_id: str) -> Device:
        if not dev_id:
            raise InvalidArgument("id", "is required")
        with self.store.read_session() as s:
            return repo.get_device(s, dev_id)

    def samples(self, dev_id: str, limit: int) -> list[DeviceSample]:
        if not 0 <= limit <= SAMPLES_KEPT:
            raise InvalidArgument("limit", f"must be between 0 and {SAMPLES_KEPT}")
        self.get(dev_id)
        with self.store.read_session() as s:
            return repo.device_samples(s, dev_id, limit=limit or 20)

    def claims_by_device(self) -> dict[str, str]:
        """Device id -> the VM holding it whole."""
        with self.store.read_session() as s:
            return {c.device_id: c.vm_id for c in repo.list_claims(s) if c.kind == "pci"}

    def set_health(self, dev_id: str, healthy: bool, reason: str) -> Device:
        """Operator taint / untaint; an operator taint survives rescans until cleared."""
        self.get(dev_id)
        if len(reason) > 256:
            raise InvalidArgument("reason", "at most 256 characters")
        health = DeviceHealth.HEALTHY if healthy else DeviceHealth.TAINTED
        reasons = [] if healthy else [f"operator: {reason or 'tainted by an operator'}"]
        with self.store.session() as s:
            dev = repo.set_device_health(s, dev_id, health.value, reasons)
        kind = "device.recovered" if healthy else "device.tainted"
        self.events.publish(
            kind,
            dev_id,
            f"device {dev_id} {health.value} by an operator",
            severity="info" if healthy else "warning",
        )
        return dev

    # ------------------------------------------------------------------ MIG

    def plan_mig(self, host: str, profiles: Sequence[str]) -> MigPlan:
        with self.store.read_session() as s:
            repo.get_host(s, host)
            snap = build_snapshot(s)
        devices = next(h.devices for h in snap.hosts if h.name == host)
        gpus = [g for g in (mig_gpu_from_snap(d) for d in devices) if g is not None]
        demands = [MigDemand(id=f"req{i}", profile=p) for i, p in enumerate(profiles)]
        return plan_geometry(gpus, demands)

    def apply_mig(self, dev_id: str, profiles: Sequence[str]) -> Operation:
        dev = self.get(dev_id)
        agent = self.agent(dev.host)
        if agent is None:
            raise FailedPrecondition(
                f"host {dev.host} has no agent: MIG needs NVML on the host", field="device_id"
            )
        with self.store.read_session() as s:
            snap = build_snapshot(s)
        dsnap = next((d for h in snap.hosts for d in h.devices if d.id == dev_id), None)
        if dsnap is None or dsnap.mig is None:
            raise FailedPrecondition(f"device {dev_id} does not support MIG", field="device_id")
        ensure_mig_reconfigurable(dsnap)
        geometry = tuple(MigPlacement(p) for p in profiles)

        def job(ctx: OperationContext) -> dict[str, str]:
            ctx.progress(10, f"applying MIG geometry on {dev_id}")
            facts = agent.apply_mig_geometry(dev.address, geometry)
            with self.store.session() as s:
                repo.update_device_telemetry(s, dev_id, mig=mig_dict(facts))
            self.events.publish(
                "device.mig", dev_id, f"MIG geometry of {dev_id}: {', '.join(profiles) or 'none'}"
            )
            return {"instances": ",".join(i.profile for i in facts.instances)}

        return self.ops.submit("device.mig", dev_id, job)
