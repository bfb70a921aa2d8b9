"""Pure bookkeeping of shared accelerator slots (vGPU instances, MIG slices) on one host.

The balance, power and recovery planners simulate moves of vGPU/MIG VMs. A snapshot does not say
which parent GPU holds a VM's mdev or GPU instance, so moves take a slot on the first device that
can give one and release one from the first device holding that type. The planners and
``policies.fits.apply_moves`` call exactly these functions, so a plan's simulated state and the
snapshot replayed from it agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vmmgr.snapshot import DeviceHealth, DeviceKind, DeviceSnap, MdevTypeSnap, MigSnap


def _usable(d: DeviceSnap) -> bool:
    return d.health == DeviceHealth.HEALTHY and d.claimed_by is None and not d.is_vf


def _with(devices: tuple[DeviceSnap, ...], i: int, d: DeviceSnap) -> tuple[DeviceSnap, ...]:
    return devices[:i] + (d,) + devices[i + 1 :]


def take_vgpu(
    devices: tuple[DeviceSnap, ...], vgpu_type: str
) -> tuple[tuple[DeviceSnap, ...], int] | None:
    """Claim one vGPU of ``vgpu_type``; None when no device can give one."""
    for i, d in enumerate(devices):
        if not _usable(d) or d.active_mdev_type not in (None, vgpu_type):
            continue
        for j, t in enumerate(d.mdev_types):
            if t.name == vgpu_type and t.available > 0:
                types = (
                    d.mdev_types[:j]
                    + (replace(t, available=t.available - 1),)
                    + d.mdev_types[j + 1 :]
                )
                nd = replace(
                    d, mdev_types=types, active_mdev_type=vgpu_type, mdev_claims=d.mdev_claims + 1
                )
                return _with(devices, i, nd), i
    return None


def release_vgpu(
    devices: tuple[DeviceSnap, ...], vgpu_type: str
) -> tuple[tuple[DeviceSnap, ...], int | None]:
    for i, d in enumerate(devices):
        if d.active_mdev_type != vgpu_type or d.mdev_claims <= 0:
            continue
        types = tuple(
            replace(t, available=min(t.max_instances, t.available + 1))
            if t.name == vgpu_type
            else t
            for t in d.mdev_types
        )
        claims = d.mdev_claims - 1
        nd = replace(
            d, mdev_types=types, mdev_claims=claims, active_mdev_type=vgpu_type if claims else None
        )
        return _with(devices, i, nd), i
    return devices, None


def take_mig(
    devices: tuple[DeviceSnap, ...], profile: str
) -> tuple[tuple[DeviceSnap, ...], int] | None:
    """Create one GPU instance of ``profile`` (slice accounting, not MIG slot positions)."""
    for i, d in enumerate(devices):
        if not _usable(d) or d.mig is None or not d.mig.enabled:
            continue
        p = next((p for p in d.mig.profiles if p.name == profile), None)
        if p is None:
            continue
        if d.mig.used_slices + p.slices > d.mig.total_slices:
            continue
        if d.mig.instances.count(profile) >= p.max_instances:
            continue
        mig = replace(d.mig, instances=d.mig.instances + (profile,))
        return _with(devices, i, replace(d, mig=mig)), i
    return None


def release_mig(
    devices: tuple[DeviceSnap, ...], profile: str
) -> tuple[tuple[DeviceSnap, ...], int | None]:
    for i, d in enumerate(devices):
        if d.mig is None or profile not in d.mig.instances:
            continue
        inst = list(d.mig.instances)
        inst.remove(profile)
        return _with(devices, i, replace(d, mig=replace(d.mig, instances=tuple(inst)))), i
    return devices, None


def _is_gpu(d: DeviceSnap) -> bool:
    return d.kind == DeviceKind.GPU and not d.is_vf


def _shares(d: DeviceSnap) -> bool:
    return d.mdev_claims > 0 or (d.mig is not None and bool(d.mig.instances))


def shared_gpu_load(devices: tuple[DeviceSnap, ...]) -> float:
    """Summed telemetry utilisation of GPUs that carry vGPU/MIG guests (device units)."""
    return sum(
        d.utilization for d in devices if _is_gpu(d) and _shares(d) and d.utilization is not None
    )


def shift_utilization(
    devices: tuple[DeviceSnap, ...], i: int | None, delta: float
) -> tuple[DeviceSnap, ...]:
    """Move ``delta`` of telemetry utilisation onto/off device ``i`` (clamped to 0..1)."""
    if i is None or delta == 0.0:
        return devices
    d = devices[i]
    if d.utilization is None:
        return devices
    return _with(devices, i, replace(d, utilization=min(1.0, max(0.0, d.utilization + delta))))


@dataclass(frozen=True, slots=True)
class AccelUse:
    """Per-host accelerator figures the scorer reads."""

    gpu_util: float | None  # mean telemetry utilisation of GPUs; None = no GPU with telemetry
    slot_used: int
    slot_cap: int


def _vgpu_cap(d: DeviceSnap) -> int:
    if not d.mdev_types:
        return 0
    if d.active_mdev_type is not None:
        t: MdevTypeSnap | None = next(
            (t for t in d.mdev_types if t.name == d.active_mdev_type), None
        )
        return t.max_instances if t is not None else 0
    return max(t.max_instances for t in d.mdev_types)


def _mig_use(m: MigSnap | None) -> tuple[int, int]:
    if m is None or not m.enabled:
        return 0, 0
    return m.used_slices, m.total_slices


def accel_use(devices: tuple[DeviceSnap, ...]) -> AccelUse:
    utils = [d.utilization for d in devices if _is_gpu(d) and d.utilization is not None]
    used = cap = 0
    for d in devices:
        if not _is_gpu(d) or d.health != DeviceHealth.HEALTHY:
            continue
        vcap = _vgpu_cap(d)
        mused, mcap = _mig_use(d.mig)
        used += d.mdev_claims + mused
        cap += vcap + mcap
    return AccelUse(sum(utils) / len(utils) if utils else None, used, cap)
