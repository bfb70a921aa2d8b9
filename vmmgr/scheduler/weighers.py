"""Weighers: each gives a raw value per candidate host (higher = better); the scheduler
normalises every weigher to 0..1 across the candidates (min-max, all-equal -> 0, as Nova does)
and sums ``multiplier x normalised``. Built-ins also implement ``weigh_many`` over arrays.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from vmmgr.snapshot import PlacementRequest

from . import devices as dv
from .filters import FilterContext, HostView
from .working import AFFINITY, FloatArray, IntArray


class Weigher(Protocol):
    name: str

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        """Raw value for one host; higher is better."""
        ...


@runtime_checkable
class VectorWeigher(Weigher, Protocol):
    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray | None:
        """Raw values for the candidates, or None when the weigher has no opinion."""
        ...


def normalise(raw: FloatArray) -> FloatArray:
    lo = float(raw.min())
    hi = float(raw.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(raw)
    return (raw - lo) / (hi - lo)


def _scalar(w: VectorWeigher, host: HostView, req: PlacementRequest, ctx: FilterContext) -> float:
    out = w.weigh_many(np.array([host.index], dtype=np.int64), req, ctx)
    return 0.0 if out is None else float(out[0])


class BalanceWeigher:
    """Spread or pack, per host pool: the host's free vCPU share plus free memory share,
    negated for pools set to pack (so the fullest host that fits wins there)."""

    name = "balance"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray:
        st = ctx.state
        share = st.free_share[cand]
        sign = st.ix.uniform_sign
        out: FloatArray = share * st.ix.pool_sign[cand] if sign is None else share * sign
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


class AcceleratorReserveWeigher:
    """Keep accelerator hosts for VMs that need accelerators: a VM without devices prefers the
    host with the fewest completely free GPUs/FPGAs."""

    name = "accelerator_reserve"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray | None:
        if ctx.demand.accel:
            return None
        out: FloatArray = -ctx.state.accel_free[cand]
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


NO_CAPACITY_LOSS = 100.0  # worse than any real loss (a host has at most a few dozen GPUs)


class GpuFragmentationWeigher:
    """Keep big GPU units placeable. vGPU / MIG: minus the drop of the host's largest placeable
    unit (free GPUs + the biggest share a partly used GPU still takes) when the instance goes on
    its best GPU there. Whole devices: minus the devices of that model left free (best fit, so
    multi-GPU hosts stay whole for multi-GPU VMs)."""

    name = "gpu_fragmentation"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray | None:
        if not ctx.demand.accel:
            return None
        st = ctx.state
        out: FloatArray = np.zeros(len(cand), dtype=np.float64)
        for need in ctx.demand.needs:
            if need.category in dv.WHOLE_CATEGORIES:
                totals = st.need_totals(need)
                if totals is not None:
                    out -= totals[cand] - need.count
            else:
                loss = st.need_loss(need)
                if loss is not None:
                    # inf = no capacity there (only when the device filter is disabled)
                    out -= np.minimum(loss[cand], NO_CAPACITY_LOSS)
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


class NumaAlignmentWeigher:
    """1 when one NUMA cell can hold the VM's vCPUs, memory and devices, else 0."""

    name = "numa_alignment"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray | None:
        if request.numa_strict:
            return None  # the filter already guarantees it
        out: FloatArray = ctx.state.cells_fit(cand, ctx.demand).astype(np.float64)
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


class LoadWeigher:
    """Current load from telemetry: host CPU load, averaged with the host's accelerator
    utilisation for accelerator requests; unknown load counts as ``config.unknown_load``."""

    name = "load"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray:
        ix = ctx.state.ix
        out: FloatArray = (ix.neg_load_accel if ctx.demand.accel else ix.neg_load)[cand]
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


class SoftAffinityWeigher:
    """Soft groups: + members on the host for affinity, - members for anti-affinity."""

    name = "soft_affinity"

    def weigh_many(
        self, cand: IntArray, request: PlacementRequest, ctx: FilterContext
    ) -> FloatArray | None:
        if not ctx.demand.soft_groups:
            return None
        out: FloatArray = np.zeros(len(cand), dtype=np.float64)
        for g in ctx.demand.soft_groups:
            counts = ctx.state.group_counts_excluding(g.name, request.vm_id)[cand]
            out += counts if g.policy == AFFINITY else -counts
        return out

    def weigh(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
        return _scalar(self, host, request, ctx)


BUILTIN_WEIGHERS: dict[str, type[VectorWeigher]] = {
    w.name: w
    for w in (
        BalanceWeigher,
        AcceleratorReserveWeigher,
        GpuFragmentationWeigher,
        NumaAlignmentWeigher,
        LoadWeigher,
        SoftAffinityWeigher,
    )
}
