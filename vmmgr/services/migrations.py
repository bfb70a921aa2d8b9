"""Migrations: live and cold moves as Operations, the migratability verdict, and maintenance
(evacuation) of a host. Decisions come from vmmgr.migration (pure) and the scheduler; the moves
themselves from the Migrator port; concurrency from one MigrationLimiter per daemon."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from vmmgr.config import Config
from vmmgr.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from vmmgr.migration import (
    HostMigrationInfo,
    Migratability,
    MigratabilityMatrix,
    MigrationLimiter,
    MigrationLimits,
    MigrationPolicy,
    MigrationProgress,
    MigrationSlot,
    Plan,
    Step,
    VMMigrationProfile,
    placement_request,
    plan_evacuation,
    validate_schedule,
)
from vmmgr.ports import LiveOptions, Migrator
from vmmgr.scheduler import Scheduler
from vmmgr.services.events import EventBus
from vmmgr.services.hosts import HostService
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.services.vms import BUSY, VMService, no_host_fits
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, ClaimKind, Host, Operation, OperationState, VMState
from vmmgr.state.snapshot_builder import build_snapshot

log = logging.getLogger(__name__)

MODES = ("live", "cold")


@dataclass(frozen=True, slots=True)
class MigrateRequest:
    mode: str = "live"  # "live" | "cold"
    target_host: str = ""  # "" = the scheduler chooses
    options: LiveOptions = LiveOptions()


def qemu_version(text: str) -> tuple[int, int, int]:
    nums = [int(n) for n in re.findall(r"\d+", text)[:3]]
    nums += [0] * (3 - len(nums))
    return (nums[0], nums[1], nums[2])


class MigrationService:
    def __init__(
        self,
        store: Store,
        ops: Operations,
        events: EventBus,
        vms: VMService,
        hosts: HostService,
        scheduler: Scheduler,
        migrator: Migrator,
        config: Config,
    ) -> None:
        self.store = store
        self.ops = ops
        self.events = events
        self.vms = vms
        self.hosts = hosts
        self.scheduler = scheduler
        self.migrator = migrator
        self.config = config
        self.policy = MigrationPolicy(allow_vgpu_live_migration=config.allow_vgpu_live_migration)
        self.limiter = MigrationLimiter(
            MigrationLimits(
                per_host_outgoing=config.migrations_per_host_out,
                per_host_incoming=config.migrations_per_host_in,
                per_cluster=config.migrations_per_cluster,
            )
        )

    # ------------------------------------------------------------------ verdicts

    def _matrix(self, snap: ClusterSnapshot) -> MigratabilityMatrix:
        with self.store.read_session() as s:
            hosts = repo.list_hosts(s)
            claims = repo.list_claims(s)
            addresses = {d.id: d.address for d in repo.list_devices(s, present_only=False)}
        pci: dict[str, list[str]] = {}
        vgpu: dict[str, str] = {}
        for c in claims:
            if c.kind == ClaimKind.PCI.value:
                pci.setdefault(c.vm_id, []).append(addresses.get(c.device_id, c.device_id))
            elif c.kind in (ClaimKind.MDEV.value, ClaimKind.MIG.value):
                vgpu[c.vm_id] = c.mdev_type or c.mig_profile
        profiles = [
            VMMigrationProfile(
                vm_id=v.id,
                running=v.running,
                pci_hostdevs=tuple(pci.get(v.id, ())),
                vgpu_type=vgpu.get(v.id),
            )
            for v in snap.vms
        ]
        infos = [HostMigrationInfo(h.name, qemu_version(h.hypervisor_version)) for h in hosts]
        return MigratabilityMatrix(
            profiles, infos, {v.id: v.host or "" for v in snap.vms}, self.policy
        )

    def migratability(self, ref: str, project: str = "default") -> Migratability:
        vm = self.vms.get(ref, project)
        with self.store.read_session() as s:
            snap = build_snapshot(s)
        return self._matrix(snap).get(vm.id)

    # ------------------------------------------------------------------ one VM

    def migrate(self, ref: str, project: str, req: MigrateRequest) -> Operation:
        if req.mode not in MODES:
            raise InvalidArgument("mode", "must be LIVE or COLD")
        validate_schedule(tuple(s for s in req.options.schedule if isinstance(s, Step)), "schedule")
        vm = self.vms.get(ref, project)
        if vm.state in BUSY:
            raise FailedPrecondition(f"vm {vm.name} is {vm.state}", field="vm")
        if req.mode == "live" and vm.state != VMState.RUNNING.value:
            raise FailedPrecondition(
                f"vm {vm.name} is {vm.state}: live migration needs it running (use cold)",
                field="vm",
            )
        with self.store.read_session() as s:
            snap = build_snapshot(s)
        target = self._target(snap, vm, req.target_host)
        verdict = self._matrix(snap).get(vm.id, target)
        verdict.require(req.mode, vm.name)  # type: ignore[arg-type]
        if req.mode == "cold" and self.vms.accel.claims(vm.id):
            raise FailedPrecondition(
                f"vm {vm.name} holds devices: moving device claims with a cold migration is "
                "planned",
                field="vm",
            )
        with self.store.session() as s:
            repo.update_vm(
                s,
                vm.id,
                {
                    "state": VMState.MIGRATING.value,
                    "state_reason": f"{req.mode} migration to {target}",
                },
            )
            op = self.ops.record(s, "vm.migrate", vm.id, message=f"to {target}")
        return self.ops.start(op, lambda ctx: self.run_move(ctx, vm, target, req, (0.0, 100.0)))

    def _target(self, snap: ClusterSnapshot, vm: VM, wanted: str) -> str:
        source = next(h for h in snap.hosts if h.name == vm.host)
        vm_snap = next(v for v in snap.vms if v.id == vm.id)
        request = placement_request(vm_snap, source)
        if wanted:
            if wanted == vm.host:
                raise InvalidArgument("target_host", f"vm {vm.name} already runs on {wanted}")
            if not any(h.name == wanted for h in snap.hosts):
                raise NotFound(f"host {wanted!r} is not registered", field="target_host")
            request = replace(request, host=wanted)
        placement = self.scheduler.place(snap, request)
        if placement.host is None:
            raise no_host_fits(f"a target for vm {vm.name!r}", placement)
        return placement.host

    def run_move(
        self,
        ctx: OperationContext,
        vm: VM,
        target: str,
        req: MigrateRequest,
        span: tuple[float, float],
    ) -> dict[str, str]:
        """Move one VM (inside an operation); ``span`` maps its progress into the op's."""
        assert vm.host is not None
        source = vm.host
        slot = MigrationSlot(vm.id, source, target)
        ctx.progress(span[0], f"waiting for a migration slot ({source} -> {target})")
        while True:
            ctx.check_cancelled()
            try:
                self.limiter.acquire(slot, timeout_s=1.0)
                break
            except ResourceExhausted:
                if any(m.vm_id == vm.id for m in self.limiter.running()):
                    raise
        lo, hi = span

        def progress(p: MigrationProgress) -> None:
            ctx.progress(lo + (hi - lo) * p.percent / 100, f"{p.phase}: {p.message}".strip(": "))

        try:
            src = self.vms.conns.get(source)
            with self.store.read_session() as s:
                target_row = repo.get_host(s, target)
            if req.mode == "live":
                result = self.migrator.live(
                    src,
                    vm.id,
                    target_row.uri,
                    _with_unsafe(req.options, self.config),
                    on_progress=progress,
                    cancelled=lambda: ctx.cancel_requested,
                )
            else:
                result = self.migrator.cold(
                    src,
                    vm.id,
                    self.vms.conns.get(target),
                    pool=self.config.vm_pool,
                    shutdown_timeout_s=self.config.shutdown_timeout_s,
                    on_progress=progress,
                    cancelled=lambda: ctx.cancel_requested,
                )
        except BaseException as exc:
            self._settle(vm, source, f"{req.mode} migration to {target} failed: {exc}")
            if ctx.cancel_requested and not isinstance(exc, Cancelled):
                raise Cancelled(f"migration cancelled: {exc}") from exc
            raise
        finally:
            self.limiter.release(slot)
        with self.store.session() as s:
            repo.move_volumes(s, vm.id, target)
            repo.update_vm(
                s,
                vm.id,
                {
                    "host": target,
                    "state": VMState.RUNNING.value
                    if req.mode == "live" or vm.state == VMState.RUNNING.value
                    else VMState.STOPPED.value,
                    "state_reason": "",
                },
            )
        downtime = "" if result.downtime_ms is None else str(result.downtime_ms)
        self.events.publish(
            "vm.migrated",
            vm.id,
            f"vm {vm.name} moved {source} -> {target} ({req.mode}, downtime {downtime or '?'} ms)",
            source=source,
            target=target,
            mode=req.mode,
            downtime_ms=downtime,
            total_ms=result.total_ms,
        )
        return {
            "vm_id": vm.id,
            "source": source,
            "target": target,
            "mode": req.mode,
            "downtime_ms": downtime,
            "total_ms": str(result.total_ms),
        }

    def _settle(self, vm: VM, source: str, reason: str) -> None:
        """After a failed move the VM stays on the source: record what libvirt shows there."""
        try:
            dom = self.vms.conns.get(source).get_domain(vm.id)
            state = (
                VMState.RUNNING.value
                if dom and dom.state.value == "running"
                else VMState.STOPPED.value
                if dom
                else VMState.ERROR.value
            )
        except Exception:  # noqa: BLE001 - the source itself may be gone
            state = VMState.UNKNOWN.value
        with self.store.session() as s:
            repo.update_vm(s, vm.id, {"state": state, "state_reason": reason})

    # ------------------------------------------------------------------ maintenance

    def plan(self, host: str, stop_blocked: bool = False) -> Plan:
        self.hosts.get(host)
        with self.store.read_session() as s:
            snap = build_snapshot(s)
        matrix = self._matrix(snap)

        def place(work: ClusterSnapshot, request: PlacementRequest) -> str | None:
            return self.scheduler.place(work, request).host

        return plan_evacuation(snap, host, matrix, place, stop_blocked=stop_blocked)

    def enter_maintenance(
        self, host: str, *, dry_run: bool, stop_blocked: bool
    ) -> tuple[Plan, Operation | None]:
        plan = self.plan(host, stop_blocked)
        if dry_run:
            return plan, None
        if not plan.feasible:
            blocked = ", ".join(f"{s.vm_name} ({s.reason})" for s in plan.by_action("blocked"))
            raise FailedPrecondition(
                f"host {host} cannot be evacuated: {blocked}; use --stop-blocked to stop those VMs",
                field="name",
            )
        self.hosts.set_maintenance(host, True)
        return plan, self.ops.submit("host.evacuate", host, lambda ctx: self._evacuate(ctx, plan))

    def _evacuate(self, ctx: OperationContext, plan: Plan) -> dict[str, str]:
        moved: list[str] = []
        n = max(len(plan.steps), 1)
        for i, step in enumerate(plan.steps):
            ctx.check_cancelled()
            span = (100 * i / n, 100 * (i + 1) / n)
            vm = self.vms.get(step.vm_id)
            if step.action in MODES:
                with self.store.session() as s:
                    repo.update_vm(
                        s,
                        vm.id,
                        {
                            "state": VMState.MIGRATING.value,
                            "state_reason": f"evacuating {plan.host}",
                        },
                    )
                self.run_move(ctx, vm, step.target_host, MigrateRequest(step.action), span)
                moved.append(f"{vm.id}:{step.target_host}")
            elif step.action == "stop" and vm.state == VMState.RUNNING.value:
                ctx.progress(span[0], f"stopping {vm.name}")
                self.vms.stop(vm.id)
        self.events.publish(
            "host.evacuated",
            plan.host,
            f"host {plan.host} evacuated ({len(moved)} VMs moved)",
            moved=len(moved),
        )
        return {"host": plan.host, "moved": ",".join(moved)}

    def exit_maintenance(self, host: str, move_back: bool) -> tuple[Host, Operation | None]:
        row = self.hosts.set_maintenance(host, False)
        if not move_back:
            return row, None
        last = next(
            (
                o
                for o in self.ops.list_ops(kind="host.evacuate", target=host, limit=20)
                if o.state == OperationState.SUCCEEDED.value
            ),
            None,
        )
        if last is None or not last.result.get("moved"):
            return row, None
        back = [item.split(":")[0] for item in last.result["moved"].split(",")]
        return row, self.ops.submit(
            "host.return", host, lambda ctx: self._move_back(ctx, host, back)
        )

    def _move_back(self, ctx: OperationContext, host: str, vm_ids: list[str]) -> dict[str, str]:
        moved = []
        for i, vm_id in enumerate(vm_ids):
            try:
                vm = self.vms.get(vm_id)
            except NotFound:
                continue  # deleted meanwhile
            if vm.state != VMState.RUNNING.value or vm.host == host:
                continue
            with self.store.session() as s:
                repo.update_vm(
                    s, vm.id, {"state": VMState.MIGRATING.value, "state_reason": f"back to {host}"}
                )
            span = (100 * i / len(vm_ids), 100 * (i + 1) / len(vm_ids))
            self.run_move(ctx, vm, host, MigrateRequest("live"), span)
            moved.append(vm.id)
        return {"host": host, "moved": ",".join(moved)}


def _with_unsafe(options: LiveOptions, config: Config) -> LiveOptions:
    return replace(options, unsafe=options.unsafe or config.migration_unsafe)
