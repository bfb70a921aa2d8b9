"""Apply MIG geometries and modes on a local GPU through NVML (the agent's job).

``apply`` diffs the GPU's instances against the target: matching instances (same profile and
placement, or same profile when the target leaves the placement to NVML) stay untouched, the
rest are destroyed (their compute instances first) and the missing ones created, largest first.
Destroying anything needs an idle GPU (no compute processes, no active vGPUs). The steps run
under an UndoStack: if one fails, created instances are destroyed and destroyed ones recreated
at their old placement, then the error is raised.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from drivers.devices.nvml import NvmlDriver
from vmmgr.devices.model import MigFacts, MigInstanceFacts, MigPlacement, MigProfileFacts
from vmmgr.errors import DriverError, FailedPrecondition, InvalidArgument
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)

MAX_COMPUTE_INSTANCES = 8


@dataclass(frozen=True, slots=True)
class _Live:
    facts: MigInstanceFacts
    handle: Any


class NvmlMig:
    def __init__(self, nvml: NvmlDriver) -> None:
        self.drv = nvml

    @property
    def nvml(self) -> Any:
        return self.drv.nvml

    def _call(self, what: str, fn_name: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, fn_name)(*args)
        except self.nvml.NVMLError as exc:
            raise DriverError(f"{what}: {fn_name} failed: {exc}") from exc

    def _facts(self, handle: Any, address: str) -> MigFacts:
        facts = self.drv.mig_facts(handle)
        if facts is None or not facts.profiles:
            raise FailedPrecondition(f"GPU {address} does not support MIG")
        return facts

    def _ensure_idle(self, handle: Any, address: str, doing: str) -> None:
        procs = self.drv.compute_processes(handle)
        if procs:
            raise FailedPrecondition(f"GPU {address} is busy ({procs} compute processes); {doing}")
        vgpus = self.drv.active_vgpus(handle)
        if vgpus:
            raise FailedPrecondition(f"GPU {address} has {vgpus} active vGPUs; {doing}")

    def set_mode(self, address: str, enabled: bool) -> MigFacts:
        handle = self.drv.handle(address)
        facts = self._facts(handle, address)
        if facts.pending == enabled and facts.enabled == enabled:
            return facts
        self._ensure_idle(handle, address, "cannot change MIG mode")
        mode = self.nvml.NVML_DEVICE_MIG_ENABLE if enabled else self.nvml.NVML_DEVICE_MIG_DISABLE
        self._call(address, "nvmlDeviceSetMigMode", handle, mode)
        return self._facts(handle, address)

    def apply(self, address: str, geometry: Sequence[MigPlacement]) -> MigFacts:
        handle = self.drv.handle(address)
        facts = self._facts(handle, address)
        if not facts.enabled:
            raise FailedPrecondition(f"MIG mode is off on GPU {address}; enable it first")
        by_name = {p.name.lower(): p for p in facts.profiles}
        for i, want in enumerate(geometry):
            if want.profile.lower() not in by_name:
                known = ", ".join(p.name for p in facts.profiles)
                raise InvalidArgument(
                    f"profiles[{i}]", f"GPU {address} has no MIG profile {want.profile!r} ({known})"
                )
        live = [_Live(f, h) for f, h in self.drv.instances_with_handles(handle)]
        keep, create = _match(live, geometry)
        destroy = [x for x in live if x not in keep]
        if destroy:
            self._ensure_idle(handle, address, "cannot destroy MIG instances")
        with UndoStack(f"MIG geometry on {address}") as undo:
            for x in destroy:
                ci_profiles = self._destroy_instance(address, x.handle)
                undo.push(
                    partial(self._recreate, handle, address, x.facts, ci_profiles),
                    f"recreate {x.facts.profile}@{x.facts.start}",
                )
            top = max(p.memory_mib for p in facts.profiles)
            ordered = sorted(create, key=lambda p: -by_name[p.profile.lower()].slices)
            for want in ordered:
                spec = by_name[want.profile.lower()]
                gi = self._create(handle, address, spec, want.start, top)
                undo.push(
                    partial(self._destroy_instance, address, gi), f"destroy new {want.profile}"
                )
        return self._facts(handle, address)

    # ------------------------------------------------------------------ steps

    def _create(
        self, handle: Any, address: str, p: MigProfileFacts, start: int | None, top_mib: int
    ) -> Any:
        what = f"create {p.name} on {address}"
        if start is None:
            return self._call(what, "nvmlDeviceCreateGpuInstance", handle, p.id)
        placement = self.nvml.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        # size in memory slices: relative to the largest profile, which spans all 8
        placement.size = max(1, round(p.memory_mib * 8 / top_mib))
        return self._call(what, "nvmlDeviceCreateGpuInstanceWithPlacement", handle, p.id, placement)

    def _compute_instances(self, gi: Any) -> list[tuple[int, Any]]:
        nvml = self.nvml
        out: list[tuple[int, Any]] = []
        count_all = getattr(nvml, "NVML_COMPUTE_INSTANCE_PROFILE_COUNT", 9)
        for ci_profile in range(count_all):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, ci_profile, nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                )
            except nvml.NVMLError:
                continue  # profile not offered by this GPU instance
            count = ctypes.c_uint(0)
            refs = (nvml.c_nvmlComputeInstance_t * MAX_COMPUTE_INSTANCES)()
            try:
                nvml.nvmlGpuInstanceGetComputeInstances(gi, info.id, refs, ctypes.byref(count))
            except nvml.NVMLError:
                continue
            out.extend((int(info.id), refs[i]) for i in range(count.value))
        return out

    def _destroy_instance(self, address: str, gi: Any) -> list[int]:
        """Destroy a GPU instance and its compute instances; returns their CI profile ids."""
        cis = self._compute_instances(gi)
        for _, ci in cis:
            self._call(f"destroy compute instance on {address}", "nvmlComputeInstanceDestroy", ci)
        self._call(f"destroy GPU instance on {address}", "nvmlGpuInstanceDestroy", gi)
        return [p for p, _ in cis]

    def _recreate(
        self, handle: Any, address: str, facts: MigInstanceFacts, ci_profiles: list[int]
    ) -> None:
        placement = self.nvml.c_nvmlGpuInstancePlacement_t()
        placement.start = facts.start
        placement.size = facts.size
        gi = self._call(
            f"recreate {facts.profile} on {address}",
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            handle,
            facts.profile_id,
            placement,
        )
        for p in ci_profiles:
            self._call(f"recreate CI on {address}", "nvmlGpuInstanceCreateComputeInstance", gi, p)


def _match(
    live: list[_Live], geometry: Sequence[MigPlacement]
) -> tuple[list[_Live], list[MigPlacement]]:
    """Which live instances satisfy the target as they are, and which targets need creating."""
    left = list(live)
    keep: list[_Live] = []
    create: list[MigPlacement] = []
    pinned = [g for g in geometry if g.start is not None]
    floating = [g for g in geometry if g.start is None]
    for want in [*pinned, *floating]:
        hit = next(
            (
                x
                for x in left
                if x.facts.profile.lower() == want.profile.lower()
                and (want.start is None or x.facts.start == want.start)
            ),
            None,
        )
        if hit is None:
            create.append(want)
        else:
            left.remove(hit)
            keep.append(hit)
    return keep, create
