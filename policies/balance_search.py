"""The balancer's search engine: vectorised move evaluation over a ClusterModel, with undo.

``evaluate`` scores every (VM, host) pair of a candidate batch in closed form: a move changes the
utilisation of two hosts, so each metric's sum and sum of squares change by two terms and the new
standard deviation follows without touching the other hosts. vGPU/MIG VMs (few) are scored
exactly by simulating the move. ``commit`` applies a move and logs what undoes it, so the planner
can roll out a few greedy steps to look ahead and roll them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.model import ClusterModel, HostAcc, Limits
from policies.score import Weights, move_costs, score_matrix, utilisation_matrix
from vmmgr.snapshot import ClusterSnapshot, DeviceSnap, VMSnap


@dataclass(slots=True)
class _Saved:
    used_vcpus: int
    used_memory_mib: int
    cpu_load: float | None
    devices: tuple[DeviceSnap, ...]
    vms: list[str]
    run_vcpus: int
    shared_vms: int


def _save(h: HostAcc) -> _Saved:
    return _Saved(
        h.used_vcpus,
        h.used_memory_mib,
        h.cpu_load,
        h.devices,
        list(h.vms),
        h.run_vcpus,
        h.shared_vms,
    )


def _restore(h: HostAcc, s: _Saved) -> None:
    h.used_vcpus, h.used_memory_mib, h.cpu_load = s.used_vcpus, s.used_memory_mib, s.cpu_load
    h.devices, h.vms, h.run_vcpus, h.shared_vms = s.devices, s.vms, s.run_vcpus, s.shared_vms


@dataclass(slots=True)
class _Undo:
    vm: VMSnap
    src: int
    dst: int
    saved: tuple[_Saved, _Saved]
    u: np.ndarray  # columns (src, dst) before
    pos: int  # index of the VM in by_host[src]
    score: float


def _top(cand: np.ndarray, rows: list[np.ndarray], k: int, largest: bool) -> np.ndarray:
    """Union of the ``k`` best of ``cand`` under each row, ordered by the first row."""
    if k >= cand.size:
        picked = cand
    else:
        parts = []
        for r in rows:
            key = -r[cand] if largest else r[cand]
            parts.append(cand[np.argpartition(key, k - 1)[:k]])
        picked = np.unique(np.concatenate(parts))
    key = -rows[0][picked] if largest else rows[0][picked]
    return picked[np.argsort(key, kind="stable")]


class Search:
    """Working state of one planning run over ``model`` (which it mutates)."""

    def __init__(
        self, model: ClusterModel, weights: Weights, limits: Limits, movable: list[VMSnap]
    ) -> None:
        self.model, self.weights, self.limits = model, weights, limits
        self.w = weights.vector()
        self.u, self.active = utilisation_matrix(model)
        hosts = model.hosts
        self.cpus = np.array([max(h.snap.cpus, 0) for h in hosts], dtype=np.float64)
        self.mem = np.array([max(h.snap.memory_mib, 0) for h in hosts], dtype=np.float64)
        self.cpu_cap = self.cpus * limits.cpu_ratio
        self.mem_cap = self.mem * limits.memory_ratio
        self.used_vcpus = np.array([h.used_vcpus for h in hosts], dtype=np.float64)
        self.used_mem = np.array([h.used_memory_mib for h in hosts], dtype=np.float64)
        pools: dict[str, int] = {}
        self.pool = np.array([pools.setdefault(h.snap.pool, len(pools)) for h in hosts])
        self.usable = self.active & (self.cpus > 0) & (self.mem > 0)
        self.n_up = int(self.active.sum())
        self.by_host: dict[int, list[str]] = {}  # movable VMs not yet moved, per host
        for vm in movable:
            assert vm.host is not None
            self.by_host.setdefault(model.index[vm.host], []).append(vm.id)
        self.n_movable = np.zeros(len(hosts), dtype=np.int64)
        for h, ids in self.by_host.items():
            self.n_movable[h] = len(ids)
        self.cost = move_costs(model, movable, weights)
        self.score = score_matrix(self.u, self.active, weights)
        self.log: list[_Undo] = []
        self._snap: ClusterSnapshot | None = None

    # -- statistics -------------------------------------------------------------------------
    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sets = self.active[None, :] & ~np.isnan(self.u)
        uz = np.where(sets, self.u, 0.0)
        n = sets.sum(axis=1).astype(np.float64)
        s1 = uz.sum(axis=1)
        s2 = (uz * uz).sum(axis=1)
        safe = np.maximum(n, 1.0)
        var = np.maximum(s2 / safe - (s1 / safe) ** 2, 0.0)
        sigma = np.where(n >= 2, np.sqrt(var), 0.0)
        return sets, n, s1, s2, sigma

    def pressure(self) -> np.ndarray:
        """Per metric and host (M x H), the weighted z-score: how much the host wants to shed
        (positive) or can take (negative) of that metric. Their sum is the score's gradient
        direction."""
        sets, n, s1, _, sigma = self._stats()
        mu = s1 / np.maximum(n, 1.0)
        scale = np.where(sigma > 0, sigma, 1.0)[:, None]
        z = np.where(sets & (sigma[:, None] > 0), (self.u - mu[:, None]) / scale, 0.0)
        return np.asarray(self.w[:, None] * z)

    def sources(self, k: int, sinks: int = 32) -> tuple[list[str], np.ndarray, bool]:
        """Movable VMs on the ``k`` most pressured hosts (by the summed pressure and by each
        metric's own, so a host hot in one metric only is not missed), the ``max(4k, sinks)``
        least pressured up hosts (same rule) as destinations, and True when that is all."""
        z = self.pressure()
        rows = [z.sum(axis=0)] + [z[m] for m in range(z.shape[0]) if self.w[m] > 0 and z[m].any()]
        movable = np.flatnonzero(self.n_movable > 0)
        up = np.flatnonzero(self.usable)
        kd = max(4 * k, sinks)
        src = _top(movable, rows, k, largest=True)
        cols = _top(up, rows, kd, largest=False)
        everything = bool(src.size >= movable.size and cols.size >= up.size)
        return [v for h in src for v in self.by_host[int(h)]], np.sort(cols), everything

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, vm_ids: Sequence[str], cols: np.ndarray | None = None) -> np.ndarray:
        """Net gain (score drop minus move cost) of each VM x each host of ``cols`` (default:
        all hosts); -inf = infeasible."""
        m = self.model
        cols = np.arange(len(m.hosts)) if cols is None else cols
        vms = [m.vms[v] for v in vm_ids]
        c = len(vms)
        src = np.array([m.index[v.host] for v in vms if v.host is not None])
        vcpus = np.array([v.vcpus for v in vms], dtype=np.float64)
        mem = np.array([v.memory_mib for v in vms], dtype=np.float64)
        feas = (
            self.usable[cols][None, :]
            & (self.used_vcpus[cols][None, :] + vcpus[:, None] <= self.cpu_cap[cols][None, :])
            & (self.used_mem[cols][None, :] + mem[:, None] <= self.mem_cap[cols][None, :])
        )
        feas &= cols[None, :] != src[:, None]
        if self.limits.same_pool:
            feas &= self.pool[cols][None, :] == self.pool[src][:, None]
        sets, n, s1, s2, sigma = self._stats()
        delta = np.zeros((c, cols.size), dtype=np.float64)
        ccpus = self.cpus[cols]
        cpus = np.where(ccpus > 0, ccpus, 1.0)[None, :]
        if m.cpu_telemetry:
            demand = np.array([m.cpu_demand(v) for v in vms], dtype=np.float64)
            load_s = self.u[0, src]
            a_cpu = load_s - np.maximum(0.0, load_s - demand / self.cpus[src])
            b_cpu = demand[:, None] / cpus
        else:
            a_cpu = vcpus / self.cpus[src]
            b_cpu = vcpus[:, None] / cpus
        cmem = self.mem[cols]
        a_mem = mem / self.mem[src]
        b_mem = mem[:, None] / np.where(cmem > 0, cmem, 1.0)[None, :]
        for k, (a, b) in enumerate(((a_cpu, b_cpu), (a_mem, b_mem))):
            if self.w[k] == 0.0 or n[k] < 2:
                continue
            ins = sets[k, src].astype(np.float64)
            ind = sets[k, cols].astype(np.float64)[None, :]
            us = np.where(sets[k, src], self.u[k, src], 0.0)
            ud = np.where(sets[k, cols], self.u[k, cols], 0.0)[None, :]
            t1 = s1[k] - (a * ins)[:, None] + b * ind
            t2 = s2[k] - ((us * us - (us - a) ** 2) * ins)[:, None]
            t2 = t2 + ((ud + b) ** 2 - ud * ud) * ind
            var = np.maximum(t2 / n[k] - (t1 / n[k]) ** 2, 0.0)
            delta += self.w[k] * (np.sqrt(var) - sigma[k])
        where = {int(h): j for j, h in enumerate(cols)}
        for r, v in enumerate(vms):
            for members in m.anti.get(v.id, ()):
                for other in members:
                    ov = m.vms.get(other)
                    if other != v.id and ov is not None and ov.host in m.index:
                        hit = where.get(m.index[ov.host])
                        if hit is not None:
                            feas[r, hit] = False
            if v.vgpu_type or v.mig_profile:
                for j in np.flatnonzero(feas[r]):
                    d = int(cols[j])
                    if m.capacity_ok(v, d):
                        delta[r, j] = self.try_score(v, d) - self.score
                    else:
                        feas[r, j] = False
        cost = np.array([self.cost[v] for v in vm_ids], dtype=np.float64)
        return np.where(feas, -delta - cost[:, None], -np.inf)

    def best(
        self, k: int, threshold: float, widen: bool = True, sinks: int = 32
    ) -> tuple[str, int, float] | None:
        """The best move among the VMs of the ``k`` most pressured hosts (widening when none)."""
        while True:
            ids, cols, everything = self.sources(k, sinks)
            if ids:
                gain = self.evaluate(ids, cols)
                j = int(np.argmax(gain))
                r, d = divmod(j, gain.shape[1])
                g = float(gain[r, d])
                if g >= threshold:
                    return ids[r], int(cols[d]), g
            if everything or not widen:
                return None
            k *= 4

    def try_score(self, vm: VMSnap, d: int) -> float:
        """Score after moving ``vm`` to host ``d``, exactly; nothing stays changed."""
        mark = len(self.log)
        self.commit(vm, d)
        after = self.score
        self.rollback(mark)
        return after

    # -- changing ---------------------------------------------------------------------------
    def _fill(self, i: int) -> None:
        cpu, mem, gpu, slots = self.model.utilisation(i)
        self.u[0, i], self.u[1, i] = cpu, mem
        self.u[2, i] = np.nan if gpu is None else gpu
        self.u[3, i] = np.nan if slots is None else slots
        self.used_vcpus[i] = self.model.hosts[i].used_vcpus
        self.used_mem[i] = self.model.hosts[i].used_memory_mib

    def commit(self, vm: VMSnap, d: int) -> None:
        m = self.model
        assert vm.host is not None
        s = m.index[vm.host]
        queue = self.by_host.get(s, [])
        pos = queue.index(vm.id) if vm.id in queue else -1
        self.log.append(
            _Undo(
                vm,
                s,
                d,
                (_save(m.hosts[s]), _save(m.hosts[d])),
                self.u[:, [s, d]].copy(),
                pos,
                self.score,
            )
        )
        m.move(vm.id, m.hosts[d].name)
        self._fill(s)
        self._fill(d)
        if pos >= 0:
            queue.pop(pos)
            self.n_movable[s] -= 1
        self._snap = None
        self.score = score_matrix(self.u, self.active, self.weights)

    def rollback(self, mark: int) -> None:
        m = self.model
        while len(self.log) > mark:
            x = self.log.pop()
            _restore(m.hosts[x.src], x.saved[0])
            _restore(m.hosts[x.dst], x.saved[1])
            m.vms[x.vm.id] = x.vm
            self.u[:, [x.src, x.dst]] = x.u
            for i in (x.src, x.dst):
                self.used_vcpus[i] = m.hosts[i].used_vcpus
                self.used_mem[i] = m.hosts[i].used_memory_mib
            if x.pos >= 0:
                self.by_host[x.src].insert(x.pos, x.vm.id)
                self.n_movable[x.src] += 1
            self.score = x.score
            self._snap = None

    def snapshot(self) -> ClusterSnapshot:
        """The model as a snapshot (for a custom ``fits``), cached until the next change."""
        if self._snap is None:
            self._snap = self.model.to_snapshot()
        return self._snap
