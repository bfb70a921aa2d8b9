"""Filters: each says, for one host, why the request cannot go there (None = it can).

Every filter has the per-host ``passes`` (the reference, and the source of the reasons shown in
explanations). The built-in ones also have ``mask``, the same rule over an array of candidate
hosts, which is what the scheduler runs; unit tests check that the two always agree. A filter
that returns False from ``applies`` is skipped (it rejects nothing). Custom filters need only
``name`` and ``passes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from vmmgr.snapshot import DeviceHealth, HostSnap, HostState, PlacementRequest

from . import devices as dv
from .working import ANTI_AFFINITY, BoolArray, Demand, IntArray, Need, WorkingState

EPS = 1e-9


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as a filter or weigher sees it: the snapshot plus the working claims."""

    index: int
    snap: HostSnap

    @property
    def name(self) -> str:
        return self.snap.name


@dataclass(slots=True)
class FilterContext:
    """What the current decision knows: the working state and the digested request."""

    state: WorkingState
    demand: Demand


class Filter(Protocol):
    name: str

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        """None when the host can take the request, else the reason it cannot."""
        ...


@runtime_checkable
class VectorFilter(Filter, Protocol):
    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool: ...

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        """For each candidate host index, whether it passes (same rule as ``passes``)."""
        ...


class HostStateFilter:
    name = "host_state"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return True

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        if host.snap.state != HostState.UP:
            return f"host is {host.snap.state.value}"
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return ctx.state.ix.up[cand]


class HostSelectionFilter:
    """``request.host`` pins the VM; ``request.exclude_hosts`` (e.g. a migration source)."""

    name = "host_selection"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return bool(request.host or request.exclude_hosts)

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        if request.host and host.name != request.host:
            return f"request pins host {request.host!r}"
        if host.name in request.exclude_hosts:
            return "excluded by the request"
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        ix = ctx.state.ix
        m: BoolArray = np.ones(len(cand), dtype=np.bool_)
        if request.host:
            m &= cand == ix.index.get(request.host, -1)
        if request.exclude_hosts:
            excl = [ix.index[h] for h in request.exclude_hosts if h in ix.index]
            if excl:
                m &= ~np.isin(cand, excl)
        return m


class HostTagsFilter:
    name = "host_tags"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return bool(request.required_tags)

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        missing = sorted(request.required_tags - host.snap.tags)
        return f"missing tag(s) {', '.join(missing)}" if missing else None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        m: BoolArray = np.ones(len(cand), dtype=np.bool_)
        for tag in request.required_tags:
            m &= ctx.state.ix.tag_mask(tag)[cand]
        return m


class VcpuFilter:
    """vCPUs within ``(cpus - reserved_host_cpus) * cpu_ratio``."""

    name = "vcpu"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return True

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        st, i = ctx.state, host.index
        cap = st.ix.cap_cpu[i]
        if st.used_cpu[i] + request.vcpus > cap + EPS:
            free = max(0.0, cap - st.used_cpu[i])
            return (
                f"needs {request.vcpus} vCPUs, {free:g} of {cap:g} free "
                f"(cpu ratio {st.config.cpu_ratio:g})"
            )
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return ctx.state.free_cpu[cand] >= request.vcpus - EPS


class MemoryFilter:
    name = "memory"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return True

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        st, i = ctx.state, host.index
        cap = st.ix.cap_mem[i]
        if st.used_mem[i] + request.memory_mib > cap + EPS:
            free = max(0.0, cap - st.used_mem[i])
            return (
                f"needs {request.memory_mib} MiB, {free:g} of {cap:g} MiB free "
                f"(memory ratio {st.config.memory_ratio:g})"
            )
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return ctx.state.free_mem[cand] >= request.memory_mib - EPS


class DiskFilter:
    """Local disk; a host reporting ``disk_gib == 0`` does not track disk (shared storage)."""

    name = "disk"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return request.disk_gib > 0

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        st, i = ctx.state, host.index
        cap = st.ix.cap_disk[i]
        if cap > 0 and st.used_disk[i] + request.disk_gib > cap + EPS:
            free = max(0.0, cap - st.used_disk[i])
            return f"needs {request.disk_gib} GiB disk, {free:g} of {cap:g} GiB free"
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return ctx.state.free_disk[cand] >= request.disk_gib - EPS


def _needs(ctx: FilterContext, categories: tuple[str, ...]) -> list[Need]:
    return [n for n in ctx.demand.needs if n.category in categories]


def _needs_mask(cand: IntArray, needs: list[Need], st: WorkingState) -> BoolArray:
    m: BoolArray = np.ones(len(cand), dtype=np.bool_)
    for need in needs:
        totals = st.need_totals(need)
        if totals is None:
            return np.zeros(len(cand), dtype=np.bool_)
        m &= totals[cand] >= need.count
    return m


class _DeviceFilter:
    categories: tuple[str, ...] = ()
    noun = ""

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return any(n.category in self.categories for n in ctx.demand.needs)

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return _needs_mask(cand, _needs(ctx, self.categories), ctx.state)

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        hd = ctx.state.devices(host.index)
        for need in _needs(ctx, self.categories):
            if hd is None:
                return f"no {need.label} {self.noun}"
            matching = [i for i in range(len(hd.devices)) if self._matches(hd, i, need)]
            if not matching:
                return f"no {need.label} {self.noun}"
            units = sum(self._units(hd, i, need) for i in matching)
            if units < need.count:
                tainted = sum(
                    1 for i in matching if hd.devices[i].snap.health == DeviceHealth.TAINTED
                )
                extra = f", {tainted} tainted" if tainted else ""
                blockers = self._blockers(hd, matching, need)
                if blockers:
                    extra += "; " + "; ".join(blockers)
                return self._shortage(need, units, len(matching), extra)
        return None

    def _blockers(self, hd: dv.HostDevices, matching: list[int], need: Need) -> list[str]:
        """Name (a few of) the devices that keep matching ones from being used."""
        out: list[str] = []
        for i in matching:
            if self._units(hd, i, need):
                continue
            d = hd.devices[i]
            mates = [hd.devices[j].snap.id for j in hd.mates[i] if hd.devices[j].busy]
            if d.busy:
                out.append(f"{d.snap.id} in use")
            elif mates:
                out.append(f"{d.snap.id} shares its IOMMU group with {', '.join(mates)}")
            if len(out) == 3:
                break
        return out

    def _matches(self, hd: dv.HostDevices, i: int, need: Need) -> bool:
        return hd.matching(i, need.keys, need.category)

    def _units(self, hd: dv.HostDevices, i: int, need: Need) -> int:
        return 1 if hd.whole_free(i, allow_vf=need.category == dv.FPGA_VF) else 0

    def _shortage(self, need: Need, units: int, devices: int, extra: str) -> str:
        return (
            f"needs {need.count} x {need.label}, {units} of {devices} free "
            f"(IOMMU group and claims counted{extra})"
        )


class GpuFilter(_DeviceFilter):
    """Whole GPUs of a model: healthy, unused, IOMMU group not shared with a used device."""

    name = "gpu"
    categories = (dv.GPU,)
    noun = "GPU"


class FpgaFilter(_DeviceFilter):
    name = "fpga"
    categories = (dv.FPGA, dv.FPGA_VF)
    noun = "FPGA"


class VgpuFilter(_DeviceFilter):
    """One vGPU of a type: a GPU offering it with capacity and no other active type."""

    name = "vgpu"
    categories = (dv.VGPU,)
    noun = "vGPU type"

    def _matches(self, hd: dv.HostDevices, i: int, need: Need) -> bool:
        return any(dv.key(dv.VGPU, t) in need.keys for t in hd.devices[i].available)

    def _units(self, hd: dv.HostDevices, i: int, need: Need) -> int:
        return sum(
            hd.vgpu_units(i, t) for t in hd.devices[i].available if dv.key(dv.VGPU, t) in need.keys
        )

    def _shortage(self, need: Need, units: int, devices: int, extra: str) -> str:
        return (
            f"no capacity for vGPU {need.label} on {devices} GPU(s) offering it "
            f"(other type active, full, or device unusable{extra})"
        )


class MigFilter(_DeviceFilter):
    """One MIG instance: enough free slices and below the profile's instance limit."""

    name = "mig"
    categories = (dv.MIG,)
    noun = "MIG-capable GPU with profile"

    def _matches(self, hd: dv.HostDevices, i: int, need: Need) -> bool:
        mig = hd.devices[i].snap.mig
        return (
            mig is not None
            and mig.enabled
            and any(dv.key(dv.MIG, p.name) in need.keys for p in mig.profiles)
        )

    def _units(self, hd: dv.HostDevices, i: int, need: Need) -> int:
        mig = hd.devices[i].snap.mig
        assert mig is not None
        return int(
            any(dv.key(dv.MIG, p.name) in need.keys and hd.mig_fits(i, p) for p in mig.profiles)
        )

    def _shortage(self, need: Need, units: int, devices: int, extra: str) -> str:
        return (
            f"MIG profile {need.label} does not fit on any of {devices} MIG GPU(s) "
            f"(free slices or instance limit{extra})"
        )


class AffinityFilter:
    """Hard groups: anti-affinity keeps members apart; affinity keeps them together (once a
    member runs on an up host, the VM must join one of those hosts)."""

    name = "affinity"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return bool(ctx.demand.hard_groups)

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        st = ctx.state
        for g in ctx.demand.hard_groups:
            counts = st.group_counts_excluding(g.name, request.vm_id)
            here = int(counts[host.index])
            if g.policy == ANTI_AFFINITY:
                if here > 0:
                    return f"anti-affinity group {g.name!r}: {here} member(s) already here"
            elif here == 0 and counts[st.ix.up_idx].sum() > 0:
                where = np.flatnonzero(counts[st.ix.up_idx] > 0)
                names = [st.ix.names[int(st.ix.up_idx[k])] for k in where[:3]]
                return f"affinity group {g.name!r}: members run on {', '.join(names)}"
        return None

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        st = ctx.state
        m: BoolArray = np.ones(len(cand), dtype=np.bool_)
        for g in ctx.demand.hard_groups:
            counts = st.group_counts_excluding(g.name, request.vm_id)
            if g.policy == ANTI_AFFINITY:
                m &= counts[cand] == 0
            elif counts[st.ix.up_idx].sum() > 0:
                m &= counts[cand] > 0
        return m


class NumaFilter:
    """``request.numa_strict``: one NUMA cell holds the vCPUs, the memory and every device."""

    name = "numa"

    def applies(self, request: PlacementRequest, ctx: FilterContext) -> bool:
        return request.numa_strict

    def passes(self, host: HostView, request: PlacementRequest, ctx: FilterContext) -> str | None:
        st, i = ctx.state, host.index
        if st.fitting_cols(i, ctx.demand):
            return None
        ids = st.ix.col_cell_id[i] or [0]
        cells = ", ".join(
            f"cell {cid}: {max(0.0, st.cell_cpu_free[c, i]):g} vCPUs "
            f"{max(0.0, st.cell_mem_free[c, i]):g} MiB"
            for c, cid in enumerate(ids)
        )
        devs = " and its devices" if ctx.demand.needs else ""
        return f"no NUMA cell holds {request.vcpus} vCPUs, {request.memory_mib} MiB{devs} ({cells})"

    def mask(self, cand: IntArray, request: PlacementRequest, ctx: FilterContext) -> BoolArray:
        return ctx.state.cells_fit(cand, ctx.demand)


BUILTIN_FILTERS: dict[str, type[VectorFilter]] = {
    f.name: f
    for f in (
        HostStateFilter,
        HostSelectionFilter,
        HostTagsFilter,
        VcpuFilter,
        MemoryFilter,
        DiskFilter,
        GpuFilter,
        VgpuFilter,
        MigFilter,
        FpgaFilter,
        AffinityFilter,
        NumaFilter,
    )
}
