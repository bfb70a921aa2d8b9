"""Builds the policy runtime for vmmgrd: the four built-in policies over the daemon's store,
scheduler, connections and executor. Settings (enabled, interval) come from the store's
PolicyConfig rows, else from the daemon config (all policies start disabled)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from policies.adapters import scheduler_fits, scheduler_place_batch
from policies.executor import HostHook, ServiceExecutor
from policies.jobs import BalancePolicy, PowerPolicy, RecoverPolicy, ScalePolicy
from policies.plan import Plan
from policies.recover import (
    CrashPolicy,
    DetectorConfig,
    FenceGuardConfig,
    HostObservation,
    on_crash,
)
from policies.runtime import PlanOutcome, PolicyRuntime, PolicySettings
from policies.scale import ScaleState, ScalingGroup
from vmmgr.errors import VmmgrError
from vmmgr.requests import VmCreate
from vmmgr.scheduler import Scheduler
from vmmgr.services.migrations import MigrationService
from vmmgr.services.operations import Operations
from vmmgr.services.vms import VMService
from vmmgr.snapshot import ClusterSnapshot
from vmmgr.state import Store, repo
from vmmgr.state.leader import leader_lease
from vmmgr.state.models import VM
from vmmgr.state.snapshot_builder import build_snapshot

log = logging.getLogger(__name__)

NAMES = ("balance", "recover", "scale", "power")


class StoreScalePolicy:
    """ScalePolicy over the scaling groups in the store, re-read on every run."""

    name = "scale"

    def __init__(self, store: Store, vms: VMService) -> None:
        self.store = store
        self.vms = vms

    def initial_state(self) -> dict[str, ScaleState]:
        return {}

    def propose(
        self, snapshot: ClusterSnapshot, state: Mapping[str, ScaleState], now: float
    ) -> tuple[PlanOutcome, dict[str, ScaleState]]:
        with self.store.read_session() as s:
            rows = repo.list_scale_groups(s)
        groups = []
        for r in rows:
            template = self.vms.placement_request(VmCreate.from_json(r.template), "template")
            groups.append(
                ScalingGroup(
                    name=r.name,
                    min_size=r.min_size,
                    max_size=r.max_size,
                    target=r.target,
                    template=template,
                    metric="gpu" if r.metric == "gpu" else "cpu",
                    scale_out_cooldown_s=r.cooldown_s,
                )
            )
        if not groups:
            return PlanOutcome(Plan(self.name, (), "no scaling groups")), dict(state)
        # load history per group is not collected yet: bounds (min/max) are still enforced
        inner = ScalePolicy(groups, lambda group: ())
        outcome, new = inner.propose(snapshot, {**inner.initial_state(), **state}, now)
        return outcome, new


class HostWatch:
    """Recovery's two channels per host: the libvirt connection and the agent heartbeat."""

    def __init__(self, vms: VMService, agent_for: Any) -> None:
        self.vms = vms
        self.agent_for = agent_for
        self.last_beat: dict[str, float] = {}

    def observe(self) -> Sequence[HostObservation]:
        out = []
        with self.vms.store.read_session() as s:
            hosts = repo.list_hosts(s)
        for h in hosts:
            try:
                self.vms.conns.get(h.name)
                alive = True
            except VmmgrError:
                alive = False
            agent = self.agent_for(h)
            beat = getattr(agent, "heartbeat", None)
            if beat is None:  # no remote agent: the libvirt channel speaks for both
                if alive:
                    self.last_beat[h.name] = time.time()
            elif beat() is not None:
                self.last_beat[h.name] = time.time()
            out.append(HostObservation(h.name, alive, self.last_beat.get(h.name)))
        return out


class Policies:
    """PolicyRuntime plus its lease: what vmmgr.api.policies.PolicyControl needs."""

    def __init__(self, runtime: PolicyRuntime, lease: Any) -> None:
        self.runtime = runtime
        self.lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)

    def is_leader(self) -> bool:
        return bool(self.lease.is_leader())


def build_policies(
    store: Store,
    ops: Operations,
    vms: VMService,
    migrations: MigrationService,
    scheduler: Scheduler,
    agent_for: Any,
    *,
    fence: HostHook | None = None,
    power_off: HostHook | None = None,
    defaults: Mapping[str, PolicySettings] | None = None,
    detector: DetectorConfig | None = None,
    guard: FenceGuardConfig | None = None,
    crash: CrashPolicy | None = None,
) -> Policies:
    fits = scheduler_fits(scheduler)
    watch = HostWatch(vms, agent_for)
    policies = [
        BalancePolicy(fits=fits),
        RecoverPolicy(
            watch.observe, scheduler_place_batch(scheduler), detector=detector, guard=guard
        ),
        StoreScalePolicy(store, vms),
        PowerPolicy(fits=fits),
    ]
    settings = {n: PolicySettings(enabled=False, interval_s=60.0) for n in NAMES}
    settings.update(defaults or {})
    with store.read_session() as s:
        for row in repo.list_policy_configs(s):
            if row.name in settings:
                settings[row.name] = PolicySettings(row.enabled, row.interval_s)

    def snapshot() -> ClusterSnapshot:
        with store.read_session() as s:
            return build_snapshot(s)

    vms.on_crash.append(CrashRestarter(vms, crash))
    lease = leader_lease(store)
    executor = ServiceExecutor(store, ops, vms, migrations, fence=fence, power_off=power_off)
    runtime = PolicyRuntime(policies, snapshot, executor, lease, settings)  # type: ignore[arg-type]
    return Policies(runtime, lease)


class CrashRestarter:
    """VM-level crash restart: an HA VM that crashed (or whose qemu died) is started again on
    its host after an exponential backoff, until it crash-loops (policies.recover.on_crash)."""

    def __init__(self, vms: VMService, policy: CrashPolicy | None = None) -> None:
        self.vms = vms
        self.policy = policy or CrashPolicy()
        self.history: dict[str, tuple[float, ...]] = {}
        self._lock = threading.Lock()

    def __call__(self, vm: VM) -> None:
        if not vm.ha or vm.desired_power != "running":
            return
        with self._lock:
            decision = on_crash(self.history.get(vm.id, ()), time.time(), self.policy)
            self.history[vm.id] = decision.history
        log.warning("vm %s crashed: %s", vm.name, decision.reason)
        if decision.restart:
            timer = threading.Timer(decision.delay_s, self._restart, (vm.id,))
            timer.daemon = True
            timer.start()

    def _restart(self, vm_id: str) -> None:
        try:
            self.vms.start(vm_id)
            self.vms.events.publish("vm.restarted", vm_id, "restarted after a crash")
        except VmmgrError as exc:
            log.error("restart of crashed vm %s failed: %s", vm_id, exc)
