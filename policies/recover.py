"""Host failure handling and VM crash restarts: the pure decisions.

Detection watches two independent channels per host: the libvirt connection (keepalive) and the
vmmgr agent's heartbeat timestamps. One channel down makes a host SUSPECT only: libvirtd can
crash while guests keep running, and an agent can die alone. Both down continuously for
``grace_s`` makes it FAILED. FAILED stays until both channels are back.

Fencing is guarded against storms: within any ``window_s`` no more than ``max_share`` of the
hosts are fenced (a network partition looks like many failed hosts at once; fencing them all
would turn it into an outage). Failed hosts over the budget are held, not fenced.

Restarting: after a host is fenced, its HA VMs are re-placed by priority (highest first) through
a batch placement callback (the scheduler's), on a snapshot in which the failed hosts are down.
Side effects (running the fence command, starting VMs) belong to drivers and the executor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from policies.model import ClusterModel, Limits
from policies.plan import Action, Fence, Plan, StartVM
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceHealth,
    DeviceKind,
    GpuRequest,
    HostState,
    PlacementRequest,
    VMSnap,
)

PlaceBatch = Callable[[ClusterSnapshot, Sequence[PlacementRequest]], Sequence[str | None]]


# -- detection --------------------------------------------------------------------------------
class Health(StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HostObservation:
    host: str
    libvirt_alive: bool
    last_heartbeat: float | None  # unix time of the agent's latest heartbeat; None = never


@dataclass(frozen=True, slots=True)
class HostHealth:
    host: str
    state: Health
    since: float  # when it entered ``state``
    both_down_since: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    heartbeat_timeout_s: float = 15.0
    grace_s: float = 30.0


def detect(
    prev: HostHealth | None, obs: HostObservation, now: float, cfg: DetectorConfig | None = None
) -> HostHealth:
    """One step of a host's health state machine."""
    c = cfg or DetectorConfig()
    beat_ok = obs.last_heartbeat is not None and now - obs.last_heartbeat <= c.heartbeat_timeout_s
    conn_ok = obs.libvirt_alive
    prev_state = prev.state if prev else Health.HEALTHY
    prev_since = prev.since if prev else now

    def enter(state: Health, down_since: float | None, reason: str) -> HostHealth:
        since = prev_since if state == prev_state else now
        return HostHealth(obs.host, state, since, down_since, reason)

    if conn_ok and beat_ok:
        return enter(Health.HEALTHY, None, "both channels up")
    if conn_ok or beat_ok:
        why = "agent heartbeat stale" if conn_ok else "libvirt connection down"
        if prev_state == Health.FAILED:
            return enter(Health.FAILED, None, f"{why}; waiting for both channels")
        return enter(Health.SUSPECT, None, why)
    down_since = prev.both_down_since if prev and prev.both_down_since is not None else now
    if prev_state == Health.FAILED or now - down_since >= c.grace_s:
        return enter(Health.FAILED, down_since, f"both channels down since {down_since:.0f}")
    return enter(Health.SUSPECT, down_since, "both channels down, within grace period")


def detect_all(
    prev: Mapping[str, HostHealth],
    observations: Sequence[HostObservation],
    now: float,
    cfg: DetectorConfig | None = None,
) -> dict[str, HostHealth]:
    return {o.host: detect(prev.get(o.host), o, now, cfg) for o in observations}


# -- fence-storm guard --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FenceGuardConfig:
    max_share: float = 0.34  # of all hosts, per window
    window_s: float = 900.0


@dataclass(frozen=True, slots=True)
class FenceDecision:
    fence: tuple[str, ...]
    held: tuple[str, ...]  # failed, but over the storm budget
    history: tuple[tuple[str, float], ...]  # (host, time) of fences inside the window, incl. new


def guard_fences(
    failed: Sequence[str],
    history: Sequence[tuple[str, float]],
    total_hosts: int,
    now: float,
    cfg: FenceGuardConfig | None = None,
) -> FenceDecision:
    """Which of ``failed`` (in the caller's priority order) may be fenced now."""
    c = cfg or FenceGuardConfig()
    recent = [(h, t) for h, t in history if now - t < c.window_s]
    done = {h for h, _ in recent}
    budget = math.floor(c.max_share * total_hosts + 1e-9) - len(recent)
    fence: list[str] = []
    held: list[str] = []
    for h in dict.fromkeys(failed):
        if h in done:
            continue  # fenced already in this window: not again
        if budget > 0:
            fence.append(h)
            budget -= 1
        else:
            held.append(h)
    new_history = tuple(recent) + tuple((h, now) for h in fence)
    return FenceDecision(tuple(fence), tuple(held), new_history)


# -- restart placement --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestartPlan:
    fence: tuple[str, ...]
    starts: tuple[StartVM, ...]  # highest priority first
    unplaced: tuple[str, ...]  # HA VMs no host could take
    left_down: tuple[str, ...]  # non-HA VMs of the failed hosts (not restarted)
    reason: str

    def to_plan(self, policy: str = "recover") -> Plan:
        stages: list[tuple[Action, ...]] = []
        if self.fence:
            stages.append(tuple(Fence(h) for h in self.fence))
        if self.starts:
            stages.append(tuple(self.starts))
        return Plan(policy, tuple(stages), self.reason)


def restart_request(
    snapshot: ClusterSnapshot, vm: VMSnap, exclude: Collection[str]
) -> PlacementRequest:
    """What a VM needs on its new host, devices included (by model, not by the lost device)."""
    devices = {d.id: d for h in snapshot.hosts for d in h.devices}
    gpus: dict[str, int] = {}
    fpga_model, fpga_count = None, 0
    for dev_id in vm.devices:
        d = devices.get(dev_id)
        if d is None:
            continue
        if d.kind == DeviceKind.FPGA:
            fpga_model, fpga_count = d.model, fpga_count + 1
        else:
            gpus[d.model] = gpus.get(d.model, 0) + 1
    return PlacementRequest(
        vm_id=vm.id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disk_gib=vm.disk_gib,
        gpus=tuple(GpuRequest(m, n) for m, n in sorted(gpus.items())),
        vgpu_type=vm.vgpu_type,
        mig_profile=vm.mig_profile,
        fpga_model=fpga_model,
        fpga_count=fpga_count,
        groups=vm.groups,
        exclude_hosts=frozenset(exclude),
    )


def without_hosts(snapshot: ClusterSnapshot, failed: Collection[str]) -> ClusterSnapshot:
    """The snapshot as placement must see it: failed hosts down, their VMs homeless and their
    device claims released."""
    gone = set(failed)
    lost = {vm.id for vm in snapshot.vms if vm.host in gone}
    hosts = tuple(
        replace(h, state=HostState.DOWN, vms=()) if h.name in gone else h for h in snapshot.hosts
    )
    vms = tuple(
        replace(vm, host=None, running=False) if vm.id in lost else vm for vm in snapshot.vms
    )
    return ClusterSnapshot(hosts, vms, snapshot.groups)


def default_place_batch(limits: Limits | None = None) -> PlaceBatch:
    """A stand-in for the scheduler: in order, the up host with the most free memory that passes
    the built-in capacity/anti-affinity/slot rules and has free healthy devices of each model."""

    def place(snapshot: ClusterSnapshot, requests: Sequence[PlacementRequest]) -> list[str | None]:
        model = ClusterModel(snapshot, limits)
        claimed: set[str] = set()
        out: list[str | None] = []
        for req in requests:
            vm = model.vms.get(req.vm_id) or VMSnap(
                req.vm_id, req.vm_id, None, req.vcpus, req.memory_mib
            )
            probe = replace(
                vm,
                host=None,
                devices=(),
                running=True,
                vgpu_type=req.vgpu_type,
                mig_profile=req.mig_profile,
            )
            best, free_best = None, -1
            for i, h in enumerate(model.hosts):
                if h.name in req.exclude_hosts or not model.fits(probe, h.name):
                    continue
                picks = _free_devices(h.devices, req, claimed)
                if picks is None:
                    continue
                free = h.snap.memory_mib - h.used_memory_mib
                if free > free_best:
                    best, free_best = (i, picks), free
            if best is None:
                out.append(None)
                continue
            i, picks = best
            claimed.update(picks)
            model.vms[probe.id] = probe
            model.move(probe.id, model.hosts[i].name)
            out.append(model.hosts[i].name)
        return out

    return place


def _free_devices(devices: Sequence, req: PlacementRequest, claimed: set[str]) -> list[str] | None:
    picks: list[str] = []
    wants = [(g.model, g.count, DeviceKind.GPU) for g in req.gpus]
    if req.fpga_model:
        wants.append((req.fpga_model, req.fpga_count, DeviceKind.FPGA))
    for model_name, count, kind in wants:
        free = [
            d.id
            for d in devices
            if d.kind == kind
            and d.model == model_name
            and d.health == DeviceHealth.HEALTHY
            and d.claimed_by is None
            and d.id not in claimed
            and d.id not in picks
        ]
        if len(free) < count:
            return None
        picks += free[:count]
    return picks


def plan_restarts(
    snapshot: ClusterSnapshot,
    failed: Collection[str],
    place_batch: PlaceBatch | None = None,
    *,
    fence: Sequence[str] = (),
) -> RestartPlan:
    """Restart the HA VMs of ``failed`` hosts elsewhere, highest priority first.

    ``fence`` names the hosts the executor must fence before anything restarts (the guard's
    output); restarting a VM whose old host is not fenced risks two copies writing one disk."""
    gone = set(failed)
    victims = [vm for vm in snapshot.vms if vm.host in gone]
    ha = sorted((vm for vm in victims if vm.ha), key=lambda v: (-v.priority, v.id))
    rest = tuple(sorted(vm.id for vm in victims if not vm.ha))
    view = without_hosts(snapshot, gone)
    requests = [restart_request(snapshot, vm, gone) for vm in ha]
    placer = place_batch or default_place_batch()
    hosts = list(placer(view, requests)) if requests else []
    if len(hosts) != len(requests):
        raise ValueError(f"place_batch answered {len(hosts)} hosts for {len(requests)} requests")
    starts = tuple(StartVM(vm.id, h) for vm, h in zip(ha, hosts, strict=True) if h is not None)
    unplaced = tuple(vm.id for vm, h in zip(ha, hosts, strict=True) if h is None)
    reason = f"{len(starts)} HA VMs restarted from {', '.join(sorted(gone)) or 'no host'}"
    if unplaced:
        reason += f"; {len(unplaced)} found no host"
    return RestartPlan(tuple(fence), starts, unplaced, rest, reason)


# -- VM crash restarts --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CrashPolicy:
    max_restarts: int = 3  # within window_s; more means a crash loop: give up
    window_s: float = 600.0
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class CrashDecision:
    restart: bool
    delay_s: float
    history: tuple[float, ...]  # restart times inside the window, incl. this one
    reason: str


def on_crash(
    history: Sequence[float], now: float, policy: CrashPolicy | None = None
) -> CrashDecision:
    """Whether and when to restart a VM that crashed at ``now`` (exponential backoff)."""
    p = policy or CrashPolicy()
    recent = tuple(t for t in history if now - t < p.window_s)
    if len(recent) >= p.max_restarts:
        return CrashDecision(
            False, 0.0, recent, f"{len(recent)} restarts in {p.window_s:.0f}s: crash loop"
        )
    delay = min(p.backoff_max_s, p.backoff_base_s * (2 ** len(recent)))
    return CrashDecision(True, delay, (*recent, now), f"restart #{len(recent) + 1} in {delay:.0f}s")
