"""Lower bound on the hosts a set of VMs needs: vector bin packing as a MILP (scipy / HiGHS).

Variables x[i, b] (VM i on host b) and y[b] (host b used), all binary, over B identical hosts:
    minimise   sum_b y[b]
    subject to sum_b x[i, b] = 1                          every VM placed once
               sum_i size[i, d] * x[i, b] <= cap[d] * y[b]  per host, per dimension d
               x[i, b] <= y[b]                             (tightens the LP relaxation)
               y[b] >= y[b + 1]                            (symmetry breaking)
If HiGHS proves optimality the bound is the optimum; otherwise its dual bound (rounded up),
which is still a valid lower bound. The trivial bound max_d ceil(sum size / cap) is also given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix


@dataclass(frozen=True)
class Bound:
    lower: int  # hosts needed at least
    optimal: bool  # HiGHS proved this is the optimum
    trivial: int  # max over dimensions of ceil(total / capacity)
    status: str
    seconds: float


def hosts_lower_bound(
    sizes: np.ndarray, cap: np.ndarray, max_hosts: int, time_limit: float = 60.0
) -> Bound:
    """``sizes``: (n_vms, dims); ``cap``: (dims,) per host; ``max_hosts``: a feasible count."""
    import time

    n, dims = sizes.shape
    trivial = int(max(math.ceil(sizes[:, d].sum() / cap[d] - 1e-9) for d in range(dims)))
    hosts = max_hosts
    nx = n * hosts
    nvar = nx + hosts

    def xv(i: int, b: int) -> int:
        return i * hosts + b

    def yv(b: int) -> int:
        return nx + b

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    r = 0
    for i in range(n):  # assignment
        for b in range(hosts):
            rows.append(r)
            cols.append(xv(i, b))
            vals.append(1.0)
        lo.append(1.0)
        hi.append(1.0)
        r += 1
    for b in range(hosts):  # capacity per dimension
        for d in range(dims):
            for i in range(n):
                if sizes[i, d]:
                    rows.append(r)
                    cols.append(xv(i, b))
                    vals.append(float(sizes[i, d]))
            rows.append(r)
            cols.append(yv(b))
            vals.append(-float(cap[d]))
            lo.append(-np.inf)
            hi.append(0.0)
            r += 1
    for b in range(hosts):  # x <= y
        for i in range(n):
            rows.extend((r, r))
            cols.extend((xv(i, b), yv(b)))
            vals.extend((1.0, -1.0))
            lo.append(-np.inf)
            hi.append(0.0)
            r += 1
    for b in range(hosts - 1):  # y[b] >= y[b+1]
        rows.extend((r, r))
        cols.extend((yv(b), yv(b + 1)))
        vals.extend((1.0, -1.0))
        lo.append(0.0)
        hi.append(np.inf)
        r += 1
    a = coo_matrix((vals, (rows, cols)), shape=(r, nvar)).tocsr()
    c = np.zeros(nvar)
    c[nx:] = 1.0
    t0 = time.perf_counter()
    res = milp(
        c,
        constraints=LinearConstraint(a, np.array(lo), np.array(hi)),
        integrality=np.ones(nvar),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit, "disp": False},
    )
    dt = time.perf_counter() - t0
    optimal = res.status == 0
    if optimal:
        lower = int(round(res.fun))
    else:
        dual = getattr(res, "mip_dual_bound", None)
        lower = int(math.ceil(dual - 1e-6)) if dual is not None and np.isfinite(dual) else trivial
    return Bound(max(lower, trivial), optimal, trivial, str(res.message), dt)
