"""The one cluster scorer: a weighted sum of the spread of host utilisation, plus move costs.

Like Ganeti's cluster score, the spread of a metric is its population standard deviation over the
up hosts that have it (GPU metrics only over hosts with GPUs). Metrics: CPU (telemetry load when
every up host reports it, else the vCPU/pCPU ratio), memory reserved, GPU telemetry utilisation,
and vGPU/MIG slot use. Lower is better; 0 is a perfectly even cluster.

A move's cost is its memory size relative to the mean host, inflated by a dirty-rate estimate
(busier VMs re-dirty pages and copy longer), divided by the number of up hosts: a move changes two
hosts out of n, so spread gains shrink like 1/n and costs must too for the same weights to mean
the same thing at 10 and at 10,000 hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.model import METRICS, ClusterModel, Limits
from vmmgr.snapshot import ClusterSnapshot, VMSnap


@dataclass(frozen=True, slots=True)
class Weights:
    cpu: float = 1.0
    memory: float = 1.0
    gpu: float = 0.5
    slots: float = 0.5
    move: float = 0.02  # per move, x (VM memory / mean host memory)
    dirty: float = 1.0  # extra move cost for a fully busy VM (dirty-rate proxy)

    def vector(self) -> np.ndarray:
        return np.array([self.cpu, self.memory, self.gpu, self.slots], dtype=np.float64)


def utilisation_matrix(model: ClusterModel) -> tuple[np.ndarray, np.ndarray]:
    """(U, active): U[m, h] = utilisation of metric m on host h (NaN = absent); active = up."""
    n = len(model.hosts)
    u = np.full((len(METRICS), n), np.nan, dtype=np.float64)
    active = np.zeros(n, dtype=bool)
    for i, h in enumerate(model.hosts):
        active[i] = h.up
        cpu, mem, gpu, slots = model.utilisation(i)
        u[0, i], u[1, i] = cpu, mem
        if gpu is not None:
            u[2, i] = gpu
        if slots is not None:
            u[3, i] = slots
    return u, active


def spreads(u: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Population standard deviation per metric over active hosts where it is defined."""
    out = np.zeros(u.shape[0], dtype=np.float64)
    for m in range(u.shape[0]):
        vals = u[m, active]
        vals = vals[~np.isnan(vals)]
        if vals.size >= 2:
            out[m] = float(np.std(vals))
    return out


def score_matrix(u: np.ndarray, active: np.ndarray, weights: Weights) -> float:
    return float(np.dot(weights.vector(), spreads(u, active)))


def model_score(model: ClusterModel, weights: Weights) -> float:
    u, active = utilisation_matrix(model)
    return score_matrix(u, active, weights)


def cluster_score(
    snapshot: ClusterSnapshot, weights: Weights | None = None, limits: Limits | None = None
) -> float:
    """THE score of a snapshot (used by every planner, the CLI dry run and the benchmarks)."""
    return model_score(ClusterModel(snapshot, limits), weights or Weights())


def score_breakdown(snapshot: ClusterSnapshot, weights: Weights | None = None) -> dict[str, float]:
    w = weights or Weights()
    u, active = utilisation_matrix(ClusterModel(snapshot))
    s = spreads(u, active)
    out = {m: float(s[i]) for i, m in enumerate(METRICS)}
    out["total"] = float(np.dot(w.vector(), s))
    return out


def move_costs(model: ClusterModel, vms: list[VMSnap], weights: Weights) -> dict[str, float]:
    """Cost of moving each VM, in score units (see the module docstring)."""
    up = [h.snap.memory_mib for h in model.hosts if h.up and h.snap.memory_mib > 0]
    if not up:
        return {vm.id: 0.0 for vm in vms}
    mean_mem = sum(up) / len(up)
    return {
        vm.id: weights.move
        * (vm.memory_mib / mean_mem)
        * (1.0 + weights.dirty * model.busy(vm))
        / len(up)
        for vm in vms
    }


def move_cost(model: ClusterModel, vm: VMSnap, weights: Weights) -> float:
    return move_costs(model, [vm], weights)[vm.id]


def objective(score_after: float, costs: list[float]) -> float:
    """Spread after the plan plus what its moves cost (what the balancer minimises)."""
    return score_after + math.fsum(costs)
