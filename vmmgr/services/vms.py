"""VM use cases: create / delete as Operations, lifecycle calls, observed state from libvirt.

Create is: validate -> place (scheduler, under a lock) -> VM row + claims in one transaction ->
an Operation that builds the host side (image replica, overlay, seed, domain, start) on an undo
stack. Any failure undoes the host side and removes the row, so nothing is left half-created.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from vmmgr import calls
from vmmgr.auth.quota import check_quota, demand_of
from vmmgr.config import Config
from vmmgr.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoHostFits,
    NotFound,
    VmmgrError,
)
from vmmgr.ports import (
    DiskSpec,
    DomainEvent,
    DomainSpec,
    DomainState,
    HostConnection,
    Hypervisor,
    NicSpec,
    PendingFile,
    VolumeInfo,
)
from vmmgr.requests import VmCreate, validate_vm_create
from vmmgr.scheduler import Scheduler
from vmmgr.scheduler.results import Placement
from vmmgr.services.accelerators import (
    Accelerators,
    Attached,
    check_known,
    claim_requests,
    numa_node,
)
from vmmgr.services.connections import ConnectionManager
from vmmgr.services.devices import DeviceService
from vmmgr.services.events import EventBus
from vmmgr.services.images import ImageService
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.snapshot import PlacementRequest
from vmmgr.state import Store, repo
from vmmgr.state.models import (
    VM,
    Operation,
    PlacementGroup,
    PowerState,
    VMState,
    Volume,
    VolumeKind,
)
from vmmgr.state.repo import hosts as host_repo
from vmmgr.state.repo import vms as vm_repo
from vmmgr.state.repo import volumes as volume_repo
from vmmgr.state.rows import build
from vmmgr.state.snapshot_builder import build_snapshot
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)

GIB = 1024**3

# Observed libvirt state -> VM state.
OBSERVED = {
    DomainState.RUNNING: VMState.RUNNING,
    DomainState.STOPPED: VMState.STOPPED,
    DomainState.PAUSED: VMState.PAUSED,
    DomainState.SHUTTING_DOWN: VMState.SHUTTING_DOWN,
    DomainState.CRASHED: VMState.CRASHED,
    DomainState.SUSPENDED_TO_DISK: VMState.PAUSED,
    DomainState.UNKNOWN: VMState.UNKNOWN,
}
# libvirt event details that mean the guest or its qemu died on its own
CRASH_DETAILS = frozenset({"crashed", "failed", "panicked"})
# While an operation owns the VM, libvirt events do not overwrite its state.
BUSY = frozenset({VMState.CREATING.value, VMState.DELETING.value, VMState.MIGRATING.value})


@dataclass(frozen=True, slots=True)
class StopResult:
    vm: VM
    forced: bool


def no_host_fits(what: str, placement: Placement) -> NoHostFits:
    """RESOURCE_EXHAUSTED saying how many hosts each filter rejected, and a few reasons why
    (e.g. which claimed device shares a GPU's IOMMU group)."""
    exp = placement.explanation
    why = "; ".join(line for f in exp.filters if f.rejected for line in f.sample_lines()[:2])
    return NoHostFits(
        f"no host fits {what}: 0 of {exp.hosts_total} hosts passed" + (f" [{why}]" if why else ""),
        {name: n for name, n in exp.rejections().items() if n},
    )


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class VMService:
    def __init__(
        self,
        store: Store,
        conns: ConnectionManager,
        ops: Operations,
        events: EventBus,
        images: ImageService,
        scheduler: Scheduler,
        config: Config,
        devices: DeviceService,
        accelerators: Accelerators,
        seeds: Hypervisor,
    ) -> None:
        self.store = store
        self.conns = conns
        self.ops = ops
        self.events = events
        self.images = images
        self.scheduler = scheduler
        self.config = config
        self.devices = devices
        self.accel = accelerators
        self.seeds = seeds
        self._place_lock = threading.Lock()
        # Called with a VM whose qemu died or whose guest crashed (the restart policy hooks in).
        self.on_crash: list[Callable[[VM], None]] = []
        # Tests inject failures between create steps through this hook (step name -> None).
        self.step_hook: Callable[[str], None] = lambda step: None

    # ------------------------------------------------------------------ queries

    def get(self, ref: str, project: str = "default") -> VM:
        if not ref:
            raise InvalidArgument("vm", "is required")
        with self.store.read_session() as s:
            if is_uuid(ref):
                vm = vm_repo.find_vm(s, ref.lower())
                if vm is not None:
                    return vm
            try:
                return vm_repo.get_vm_by_name(s, ref, project or "default")
            except NotFound:
                raise NotFound(
                    f"vm {ref!r} not found in project {project or 'default'!r}", field="vm"
                ) from None

    def usage_by_host(self) -> dict[str, tuple[int, int, int]]:
        """Host -> (VMs, vCPUs, memory MiB) placed there."""
        with self.store.read_session() as s:
            snap = build_snapshot(s)
        return {h.name: (len(h.vms), h.used_vcpus, h.used_memory_mib) for h in snap.hosts}

    def volumes(self, vm_id: str) -> list[Volume]:
        with self.store.read_session() as s:
            return volume_repo.list_volumes(s, vm_id=vm_id)

    def list_vms(
        self,
        *,
        host: str = "",
        state: str = "",
        project: str = "",
        labels: dict[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[VM], str]:
        with self.store.read_session() as s:
            page = vm_repo.list_vms(
                s,
                host=host or None,
                states=[state] if state else None,
                project=project or None,
                labels=labels,
                page_size=page_size,
                page_token=page_token,
            )
        return page.items, page.next_page_token

    # ------------------------------------------------------------------ placement

    def placement_request(self, req: VmCreate, vm_id: str) -> PlacementRequest:
        disk_gib = sum(d.size_gib for d in req.disks)
        fpga = req.fpgas[0] if req.fpgas else None
        return PlacementRequest(
            vm_id=vm_id,
            vcpus=req.vcpus,
            memory_mib=req.memory_mib,
            disk_gib=disk_gib,
            gpus=req.gpus,
            vgpu_type=req.vgpu_type or None,
            mig_profile=req.mig_profile or None,
            fpga_model=fpga.model if fpga else None,
            fpga_count=fpga.count if fpga else 0,
            fpga_allow_vf=fpga.allow_vf if fpga else False,
            groups=req.groups,
            required_tags=frozenset(req.required_host_tags),
            host=req.host or None,
        )

    def explain(self, req: VmCreate) -> Placement:
        validate_vm_create(req)
        with self.store.read_session() as s:
            snap = build_snapshot(s, placement_only=True)
        return self.scheduler.place(snap, self.placement_request(req, "dry-run"), explain=True)

    # ------------------------------------------------------------------ create

    def create(self, req: VmCreate, *, owner: str = "", request_id: str = "") -> Operation:
        """Place and record the VM, then build it as an Operation. A ``request_id`` seen
        before returns that call's operation (a retried call creates nothing twice)."""
        validate_vm_create(req)
        vm_id = str(uuid.uuid4())
        # The seed depends on the request alone: its ISO tool runs on another core meanwhile.
        seed = self.seeds.build_seed(*cloud_init_documents(vm_id, req))
        try:
            # One lock and one transaction for every check and the VM row: the quota, the
            # name and the placement all hold until the row is committed, so concurrent
            # creates cannot both pass.
            with self._place_lock, self.store.session() as s:
                if request_id and not calls.is_new_request_id(request_id):
                    prior = repo.find_operation_by_request_id(s, request_id)
                    if prior is not None:
                        seed.discard()
                        return prior
                check_quota(s, req.project, demand_of(req))
                for i, disk in enumerate(req.disks):
                    ImageService.lookup(s, disk.image, field=f"spec.disks[{i}].image")
                for i, group in enumerate(req.groups):
                    if s.get(PlacementGroup, group) is None:
                        raise NotFound(
                            f"placement group {group!r} not found", field=f"spec.groups[{i}]"
                        )
                if vm_repo.name_taken(s, req.name, req.project):
                    raise AlreadyExists(
                        f"vm {req.name!r} already exists in project {req.project!r}",
                        field="spec.name",
                    )
                snap = build_snapshot(s, placement_only=True, groups=bool(req.groups))
                check_known(req, snap, self.accel.fpga_profiles)
                placement = self.scheduler.place(snap, self.placement_request(req, vm_id))
                if placement.host is None:
                    raise no_host_fits(f"vm {req.name!r}", placement)
                host = placement.host
                claims = claim_requests(placement, snap)
                numa = numa_node(placement, snap)
                vm = vm_repo.add_vm(
                    s,
                    build(
                        VM,
                        {
                            "id": vm_id,
                            "name": req.name,
                            "project": req.project,
                            "owner": owner,
                            "description": req.description,
                            "host": host,
                            "vcpus": req.vcpus,
                            "memory_mib": req.memory_mib,
                            "disk_gib": sum(d.size_gib for d in req.disks),
                            "image": req.disks[0].image,
                            "spec": req.to_json(),
                            "desired_power": (
                                PowerState.RUNNING if req.start else PowerState.STOPPED
                            ).value,
                            "state": VMState.CREATING.value,
                            "labels": dict(req.labels),
                            "ha": req.ha,
                            "ha_priority": req.ha_priority,
                            "domain_uuid": vm_id,
                        },
                    ),
                    self._volume_rows(vm_id, host, req),
                )
                if claims:
                    repo.claim_devices(s, vm_id, claims)
                if req.groups:
                    repo.set_vm_groups(s, vm_id, req.groups)
                op = self.ops.record(
                    s, "vm.create", vm_id, request_id=request_id, message=f"placed on {host}"
                )
                if (call := calls.current()) is not None:
                    call.audit_in(s, f"operation {op.id}")
        except BaseException:
            seed.discard()
            raise
        devices = bool(claims)
        return self.ops.start(op, lambda ctx: self._build(ctx, vm, req, host, numa, devices, seed))

    def _build(
        self,
        ctx: OperationContext,
        vm: VM,
        req: VmCreate,
        host: str,
        numa: int | None,
        devices: bool,
        seed_file: PendingFile,
    ) -> dict[str, str]:
        vm_id = vm.id
        ctx.after(seed_file.discard)  # on every path, even one that fails before the upload
        undo = UndoStack(f"create vm {vm_id}")
        try:
            with undo:
                conn = self.conns.get(host)
                disks: list[DiskSpec] = []
                for i, disk in enumerate(req.disks):
                    ctx.check_cancelled()
                    ctx.progress(5 + 40 * i / len(req.disks), f"preparing image {disk.image}")
                    base = self.images.ensure_on_host(disk.image, host, conn)
                    self.step_hook("overlay")
                    capacity = max(disk.size_gib * GIB, base.capacity_bytes)
                    vol = self._volume(
                        conn,
                        undo,
                        vm_id,
                        partial(
                            conn.create_overlay,
                            self.config.vm_pool,
                            f"{vm_id}-disk{i}.qcow2",
                            base,
                            capacity,
                        ),
                    )
                    disks.append(
                        DiskSpec(
                            path=vol.path,
                            target=f"vd{chr(ord('a') + i)}",
                            bus=disk.bus,
                            format="qcow2",
                        )
                    )
                # The seed's volume is made (and the domain defined with it) while the ISO tool
                # may still run: its bytes are copied in once it is done.
                self.step_hook("seed")
                seed_name = f"{vm_id}-seed.iso"
                seed = self._volume(
                    conn,
                    undo,
                    vm_id,
                    partial(
                        conn.create_raw_volume,
                        self.config.vm_pool,
                        seed_name,
                        seed_file.max_bytes,
                    ),
                )
                seed_disk = DiskSpec(
                    path=seed.path,
                    target="sda",
                    bus="sata",
                    device="cdrom",
                    format="raw",
                    readonly=True,
                )
                ctx.check_cancelled()
                ctx.progress(50, "preparing devices")
                self.step_hook("devices")
                agent = self.devices.agent(host) if devices else None
                attached = self.accel.prepare(vm_id, host, agent, undo) if devices else Attached()
                ctx.progress(55, "defining domain")
                self.step_hook("define")
                spec = dataclasses.replace(
                    self.domain_spec(
                        vm, req, (*disks, seed_disk), self._domain_type(host, req)
                    ),
                    pci_hostdevs=attached.pci,
                    mdev_hostdevs=attached.mdev,
                    numa_node=numa,
                )
                conn.define(spec, new=True)  # vm_id is a fresh uuid4
                undo.push(lambda: conn.undefine(vm_id), "undefine domain")
                ctx.check_cancelled()
                ctx.progress(65, "writing cloud-init seed")
                self.step_hook("upload")
                conn.write_volume(self.config.vm_pool, seed_name, seed_file.wait())
                ctx.release(seed_file.discard)  # the bytes are in the volume now
                state = VMState.STOPPED
                if req.start:
                    ctx.check_cancelled()
                    if req.fpgas and req.fpgas[0].profile:
                        ctx.progress(75, "programming FPGAs")
                        self.accel.program_fpgas(vm_id, req, agent)
                    ctx.progress(80, "starting")
                    self.step_hook("start")
                    conn.start(vm_id)
                    undo.push(lambda: conn.destroy(vm_id), "destroy domain")
                    state = VMState.RUNNING
                self.step_hook("commit")
                result = {"vm_id": vm_id, "host": host, "vm_state": state.value}
                with self.store.session() as s:
                    vm_repo.set_vm_state(s, vm_id, state)
                    ctx.succeed_in(s, result)
                    created = self.events.publish_in(
                        s,
                        "vm.created",
                        vm_id,
                        f"vm {vm.name} created on {host}",
                        name=vm.name,
                        host=host,
                        state=state.value,
                    )
        except BaseException as exc:
            self._forget(vm_id)
            self.events.publish(
                "vm.create_failed",
                vm_id,
                f"create {vm.name} failed: {exc}",
                severity="warning",
                name=vm.name,
                host=host,
            )
            raise
        self.events.fan_out(created)
        return result

    def _volume(
        self,
        conn: HostConnection,
        undo: UndoStack,
        vm_id: str,
        create: Callable[[], VolumeInfo],
    ) -> VolumeInfo:
        """Create a volume recorded (with its expected path) when the VM row was written, so a
        crash at any point leaves a row that delete or restart recovery can clean up."""
        vol = create()
        undo.push(lambda: conn.delete_volume(vol.pool, vol.name), f"delete volume {vol.name}")
        expected = os.path.join(self.config.vm_pool_path, vol.name)
        if vol.path != expected:  # a pre-existing pool elsewhere: record the real path
            with self.store.session() as s:
                volume_repo.set_volume_path(s, vm_id, vol.name, vol.path)
        return vol

    def _volume_rows(self, vm_id: str, host: str, req: VmCreate) -> list[Volume]:
        names = [(f"{vm_id}-disk{i}.qcow2", VolumeKind.OVERLAY) for i in range(len(req.disks))]
        names.append((f"{vm_id}-seed.iso", VolumeKind.SEED))
        return [
            build(
                Volume,
                {
                    "vm_id": vm_id,
                    "host": host,
                    "pool": self.config.vm_pool,
                    "name": n,
                    "path": os.path.join(self.config.vm_pool_path, n),
                    "kind": k.value,
                },
            )
            for n, k in names
        ]

    def _drop_volume_row(self, volume_id: str) -> None:
        with self.store.session() as s:
            volume_repo.delete_volume(s, volume_id)

    def _forget(self, vm_id: str) -> None:
        with self.store.session() as s:
            if vm_repo.find_vm(s, vm_id) is not None:
                vm_repo.delete_vm(s, vm_id, force=True)

    def _domain_type(self, host: str, req: VmCreate) -> str:
        if req.domain_type:
            return req.domain_type
        if self.config.default_domain_type:
            return self.config.default_domain_type
        with self.store.read_session() as s:
            types = host_repo.get_host(s, host).domain_types
        return "kvm" if "kvm" in types else "qemu"

    def domain_spec(
        self, vm: VM, req: VmCreate, disks: tuple[DiskSpec, ...], domain_type: str
    ) -> DomainSpec:
        nics = tuple(NicSpec(network=n.network, mac=n.mac) for n in req.nics) or (
            NicSpec(network=self.config.default_network),
        )
        return DomainSpec(
            vm_id=vm.id,
            name=vm.name,
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            owner=vm.owner,
            description=vm.description,
            domain_type=domain_type,
            disks=disks,
            nics=nics,
            watchdog=req.watchdog,
            labels=dict(req.labels),
        )

    # ------------------------------------------------------------------ delete

    def delete(self, ref: str, project: str = "default") -> Operation:
        vm = self.get(ref, project)
        if vm.state in BUSY:
            raise FailedPrecondition(
                f"vm {vm.name} is {vm.state}; wait for that to finish", field="vm"
            )
        with self.store.session() as s:
            vm_repo.update_vm(
                s, vm.id, {"state": VMState.DELETING.value, "state_reason": "delete requested"}
            )
        return self.ops.submit("vm.delete", vm.id, lambda ctx: self._teardown(ctx, vm.id))

    def _teardown(self, ctx: OperationContext, vm_id: str) -> dict[str, str]:
        with self.store.read_session() as s:
            vm = vm_repo.get_vm(s, vm_id)
        try:
            if vm.host:
                conn = self.conns.get(vm.host)
                ctx.progress(10, "stopping domain")
                dom = conn.get_domain(vm_id)
                if dom is not None:
                    if dom.state != DomainState.STOPPED:
                        conn.destroy(vm_id)
                    ctx.progress(40, "undefining domain")
                    conn.undefine(vm_id)
                vols = self.volumes(vm_id)
                for n, vol in enumerate(vols):
                    ctx.progress(50 + 40 * n / max(len(vols), 1), f"deleting volume {vol.name}")
                    conn.delete_volume(vol.pool, vol.name)
                    self._drop_volume_row(vol.id)
                if self.accel.claims(vm_id):
                    ctx.progress(95, "releasing devices")
                    self.accel.release(vm_id, self.devices.agent(vm.host))
        except VmmgrError as exc:
            with self.store.session() as s:
                vm_repo.update_vm(
                    s,
                    vm_id,
                    {"state": VMState.ERROR.value, "state_reason": f"delete failed: {exc}"},
                )
            raise
        with self.store.session() as s:
            vm_repo.delete_vm(s, vm_id, force=True)
        self.events.publish("vm.deleted", vm_id, f"vm {vm.name} deleted", name=vm.name)
        return {"vm_id": vm_id}

    # ------------------------------------------------------------------ HA restart

    def restart_on(self, vm_id: str, target: str) -> VM:
        """Start a VM whose host failed (and was fenced) on ``target``, from the same disks.

        Its volumes must be on storage the target sees at the same paths (a shared pool); the
        lock manager (virtlockd / sanlock leases) refuses a second start while the old qemu
        still holds the disk, so a wrong fencing decision cannot run it twice.
        """
        with self.store.read_session() as s:
            vm = vm_repo.get_vm(s, vm_id)
        if self.accel.claims(vm_id):
            raise FailedPrecondition(f"vm {vm.name} holds host devices: no restart elsewhere")
        req = VmCreate.from_json(vm.spec)
        vols = self.volumes(vm_id)
        disks = tuple(
            DiskSpec(path=v.path, target=f"vd{chr(ord('a') + i)}", bus=req.disks[i].bus)
            for i, v in enumerate(x for x in vols if x.kind == VolumeKind.OVERLAY.value)
        )
        disks += tuple(
            DiskSpec(
                path=v.path, target="sda", bus="sata", device="cdrom", format="raw", readonly=True
            )
            for v in vols
            if v.kind == VolumeKind.SEED.value
        )
        conn = self.conns.get(target)
        with UndoStack(f"restart {vm.name} on {target}") as undo:
            conn.define(self.domain_spec(vm, req, disks, self._domain_type(target, req)))
            undo.push(lambda: conn.undefine(vm_id), "undefine domain")
            conn.start(vm_id)
        with self.store.session() as s:
            repo.move_volumes(s, vm_id, target)
            vm = vm_repo.update_vm(
                s,
                vm_id,
                {
                    "host": target,
                    "state": VMState.RUNNING.value,
                    "state_reason": f"restarted after {vm.host} failed",
                },
            )
        self.events.publish(
            "vm.restarted", vm_id, f"vm {vm.name} restarted on {target}", host=target
        )
        return vm

    # ------------------------------------------------------------------ lifecycle

    def _conn_for(self, vm: VM) -> HostConnection:
        if vm.state in BUSY:
            raise FailedPrecondition(f"vm {vm.name} is {vm.state}", field="vm")
        if not vm.host:
            raise FailedPrecondition(f"vm {vm.name} is not placed on a host", field="vm")
        return self.conns.get(vm.host)

    def _observe(self, vm: VM, conn: HostConnection, desired: PowerState | None = None) -> VM:
        dom = conn.get_domain(vm.id)
        state = OBSERVED[dom.state] if dom else VMState.ERROR
        changes: dict[str, object] = {
            "state": state.value,
            "state_reason": "" if dom else "domain missing on host",
        }
        if desired is not None:
            changes["desired_power"] = desired.value
        with self.store.session() as s:
            return vm_repo.update_vm(s, vm.id, changes)

    def start(self, ref: str, project: str = "default") -> VM:
        vm = self.get(ref, project)
        conn = self._conn_for(vm)
        dom = conn.get_domain(vm.id)
        if dom is None:
            raise FailedPrecondition(f"vm {vm.name}: domain missing on host {vm.host}")
        if dom.state == DomainState.RUNNING:
            return self._observe(vm, conn, PowerState.RUNNING)
        if dom.state == DomainState.PAUSED:
            raise FailedPrecondition(f"vm {vm.name} is paused; resume it", field="vm")
        conn.start(vm.id)
        return self._observe(vm, conn, PowerState.RUNNING)

    def stop(
        self, ref: str, project: str = "default", *, timeout_s: float = 0.0, force: bool = False
    ) -> StopResult:
        if timeout_s < 0 or timeout_s > 3600:
            raise InvalidArgument("timeout_seconds", "must be between 0 and 3600")
        vm = self.get(ref, project)
        conn = self._conn_for(vm)
        dom = conn.get_domain(vm.id)
        forced = False
        if dom is not None and dom.state != DomainState.STOPPED:
            stopped = False
            if not force:
                stopped = conn.shutdown(vm.id, timeout_s or self.config.shutdown_timeout_s)
            if not stopped:
                conn.destroy(vm.id)
                forced = True
        return StopResult(self._observe(vm, conn, PowerState.STOPPED), forced)

    def reboot(self, ref: str, project: str = "default") -> VM:
        vm = self.get(ref, project)
        conn = self._conn_for(vm)
        self._require_state(vm, conn, DomainState.RUNNING, "reboot")
        conn.reboot(vm.id)
        return self._observe(vm, conn)

    def suspend(self, ref: str, project: str = "default") -> VM:
        vm = self.get(ref, project)
        conn = self._conn_for(vm)
        self._require_state(vm, conn, DomainState.RUNNING, "suspend")
        conn.suspend(vm.id)
        return self._observe(vm, conn, PowerState.PAUSED)

    def resume(self, ref: str, project: str = "default") -> VM:
        vm = self.get(ref, project)
        conn = self._conn_for(vm)
        self._require_state(vm, conn, DomainState.PAUSED, "resume")
        conn.resume(vm.id)
        return self._observe(vm, conn, PowerState.RUNNING)

    @staticmethod
    def _require_state(vm: VM, conn: HostConnection, want: DomainState, action: str) -> None:
        dom = conn.get_domain(vm.id)
        have = dom.state if dom else None
        if have != want:
            raise FailedPrecondition(
                f"cannot {action} vm {vm.name}: it is {have.value if have else 'missing'}, "
                f"not {want.value}",
                field="vm",
            )

    # ------------------------------------------------------------------ observed state

    def on_domain_event(self, event: DomainEvent) -> None:
        """libvirt lifecycle event -> observed VM state (foreign domains are only reported)."""
        if event.vm_id is None or self.ops.busy(event.vm_id, since=event.observed):
            # libvirt told it while an operation of ours owned the VM (created, deleted or
            # migrated it): that operation records the outcome, even if the event arrives late
            return
        new = OBSERVED[event.state].value
        reason = event.reason
        if event.reason == "undefined":
            new, reason = VMState.ERROR.value, "domain undefined outside vmmgr"
        with self.store.read_session() as s:  # most events change nothing: no write lock
            seen = vm_repo.state_and_host(s, event.vm_id)
            if seen is None or seen[0] in BUSY or seen[1] != event.host or new == seen[0]:
                return
            vm = vm_repo.find_vm(s, event.vm_id)
        if vm is None:
            return
        with self.store.session() as s:
            try:
                vm_repo.update_vm(
                    s,
                    vm.id,
                    {"state": new, "state_reason": reason},
                    expected_generation=vm.generation,
                )
            except (Aborted, NotFound):
                return  # changed or deleted meanwhile: whoever did it knows better
        if event.state == DomainState.CRASHED or event.detail in CRASH_DETAILS:
            for hook in self.on_crash:
                hook(vm)
        self.events.publish(
            "vm.state",
            vm.id,
            f"vm {vm.name} is {new} ({reason})",
            name=vm.name,
            state=new,
            reason=reason,
            host=event.host,
        )

    def resync_host(self, host: str, seen_foreign: set[str]) -> None:
        """Compare one host's domains with the store and record what is observed."""
        conn = self.conns.get(host)
        domains = conn.list_domains()
        by_id = {d.vm_id: d for d in domains if d.vm_id}
        for d in domains:
            if d.vm_id is None and d.uuid not in seen_foreign:
                seen_foreign.add(d.uuid)
                self.events.publish(
                    "vm.foreign",
                    d.uuid,
                    f"foreign domain {d.name} on {host}: not managed by vmmgr",
                    host=host,
                    name=d.name,
                )
        with self.store.session() as s:
            rows = vm_repo.list_vms(s, host=host, page_size=1000)
            vms = list(rows.items)
            while rows.next_page_token:
                rows = vm_repo.list_vms(
                    s, host=host, page_size=1000, page_token=rows.next_page_token
                )
                vms.extend(rows.items)
            changed: list[tuple[VM, str, str]] = []
            for vm in vms:
                if vm.state in BUSY:
                    continue
                dom = by_id.get(vm.id)
                new = OBSERVED[dom.state].value if dom else VMState.ERROR.value
                reason = "" if dom else "domain missing on host"
                if (new, reason) != (vm.state, vm.state_reason) and not (dom and new == vm.state):
                    vm_repo.update_vm(s, vm.id, {"state": new, "state_reason": reason})
                    changed.append((vm, new, reason))
            known = {vm.id for vm in vms}
        for vm, new, reason in changed:
            self.events.publish(
                "vm.state",
                vm.id,
                f"vm {vm.name} is {new} {reason}".strip(),
                name=vm.name,
                state=new,
                host=host,
            )
        for vm_id, d in by_id.items():
            if vm_id not in known and d.uuid not in seen_foreign:
                seen_foreign.add(d.uuid)
                self.events.publish(
                    "vm.orphan",
                    vm_id,
                    f"domain {d.name} on {host} carries vmmgr metadata but has "
                    "no VM in the store; left untouched",
                    severity="warning",
                    host=host,
                )

    def recover_interrupted(self, ops: Sequence[Operation]) -> None:
        """Start-up: undo what creates/deletes killed mid-way left behind, then fail them."""
        for op in ops:
            if op.kind == "vm.create":
                self._undo_partial_create(op.target)
            elif op.kind == "vm.delete":
                with self.store.session() as s:
                    vm = vm_repo.find_vm(s, op.target)
                    if vm is not None:
                        vm_repo.update_vm(
                            s,
                            vm.id,
                            {
                                "state": VMState.ERROR.value,
                                "state_reason": "delete interrupted; delete again",
                            },
                        )
            self.ops.fail_interrupted(op.id, "daemon restarted while this operation ran")

    def _undo_partial_create(self, vm_id: str) -> None:
        with self.store.read_session() as s:
            vm = vm_repo.find_vm(s, vm_id)
        if vm is None or not vm.host:
            self._forget(vm_id)
            return
        try:
            conn = self.conns.get(vm.host, force=True)
            dom = conn.get_domain(vm_id)
            if dom is not None:
                if dom.state != DomainState.STOPPED:
                    conn.destroy(vm_id)
                conn.undefine(vm_id)
            for vol in self.volumes(vm_id):
                conn.delete_volume(vol.pool, vol.name)
            if self.accel.claims(vm_id):
                self.accel.release(vm_id, self.devices.agent(vm.host))
        except VmmgrError as exc:
            log.error("cannot clean up interrupted create of %s: %s", vm_id, exc)
            with self.store.session() as s:
                vm_repo.update_vm(
                    s,
                    vm_id,
                    {"state": VMState.ERROR.value, "state_reason": f"interrupted create: {exc}"},
                )
            return
        self._forget(vm_id)


def cloud_init_documents(vm_id: str, req: VmCreate) -> tuple[str, str, str]:
    """NoCloud meta-data, user-data and network-config for a VM.

    Generated documents are JSON (valid YAML), so no user string is ever spliced into YAML
    syntax; user-supplied user-data and network-config are passed through verbatim as files.
    """
    ci = req.cloud_init
    hostname = ci.hostname if ci and ci.hostname else req.name
    meta = json.dumps({"instance-id": vm_id, "local-hostname": hostname})
    if ci and ci.user_data:
        user = ci.user_data
    else:
        keys = list(ci.ssh_authorized_keys) if ci else []
        user = "#cloud-config\n" + json.dumps({"hostname": hostname, "ssh_authorized_keys": keys})
    return meta, user, ci.network_config if ci else ""
