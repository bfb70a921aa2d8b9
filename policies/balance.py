"""Load balancer: a greedy planner of live migrations with a short look-ahead (pure).

Objective = ``policies.score`` spread + the moves' costs. Each step scores (numpy, closed form)
every movable VM on the ``sources`` most pressured hosts (pressure = the score's gradient, taken
overall and per metric, so a host hot in memory only is not missed) against the least pressured
hosts (``sinks``). Of the
``lookahead`` best first moves that pass the filters, it takes the one whose greedy roll-out of
``rollout`` moves lowers the score most (plain steepest descent when lookahead <= 1): that needs
fewer moves than steepest descent for the same score. When the most pressured hosts offer no move
gaining at least ``min_gain`` it widens the search to every host before stopping, so it stops at a
single-move local optimum (like Ganeti's hbal) or at a limit. A VM moves at most once per run, and
every committed move lowers the score, so a plan (or any prefix of it) never worsens the score.

Triggering has hysteresis: rounds with score >= ``start_threshold`` are counted in the state the
caller passes back each run; after ``hold_rounds`` of them the planner balances down to
``stop_threshold`` and goes on in later runs (while it hits ``max_moves``) until it gets there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.balance_search import Search
from policies.fits import FitsFn
from policies.model import ClusterModel, Limits
from policies.plan import Move, Plan, disjoint_stages
from policies.score import Weights
from vmmgr.snapshot import ClusterSnapshot, VMSnap

_EPS = 1e-12
_MIN_STEP = 1e-9  # a move must gain at least this much, even with min_gain 0


@dataclass(frozen=True, slots=True)
class BalanceConfig:
    weights: Weights = Weights()
    limits: Limits = Limits()
    start_threshold: float = 0.05
    stop_threshold: float = 0.02
    hold_rounds: int = 2
    min_gain: float = 0.045  # net gain of one move x number of up hosts (size-independent)
    max_moves: int = 20
    cooldown_s: float = 3600.0  # a VM moved less than this ago stays put
    sources: int = 16  # most pressured hosts (overall and per metric) searched first
    sinks: int = 32  # least pressured hosts tried as destinations (at least 4 x sources)
    lookahead: int = 8  # first moves compared by their roll-out
    rollout: int = 5  # moves in each roll-out (the first included)
    rollout_sources: int = 4  # roll-outs only estimate: a narrower, cheaper search
    fits_tries: int = 16  # candidates offered to the filters per step before giving up


@dataclass(frozen=True, slots=True)
class BalanceState:
    """Carried from one run to the next by the caller (the runtime keeps it in memory)."""

    rounds_over: int = 0
    active: bool = False
    last_moved: tuple[tuple[str, float], ...] = ()  # (vm id, unix time of its last move)


@dataclass(frozen=True, slots=True)
class BalancePlan:
    moves: tuple[Move, ...]
    stages: tuple[tuple[Move, ...], ...]  # disjoint hosts inside a stage: run in parallel
    score_before: float
    score_after: float
    state: BalanceState
    reason: str
    costs: float = 0.0

    @property
    def objective(self) -> float:
        return self.score_after + self.costs

    def to_plan(self, policy: str = "balance") -> Plan:
        return Plan(policy, self.stages, self.reason)


def movable(
    model: ClusterModel, now: float, last_moved: dict[str, float], cooldown_s: float
) -> list[VMSnap]:
    """Running, live-migratable VMs on up hosts, out of cooldown, not bound by hard affinity."""
    out = []
    for vm in model.vms.values():
        if not vm.running or not vm.migratable or vm.devices or vm.host not in model.index:
            continue
        if not model.hosts[model.index[vm.host]].up:
            continue
        t = last_moved.get(vm.id)
        if t is not None and now - t < cooldown_s:
            continue
        if any(len(members) > 1 for members in model.affinity.get(vm.id, ())):
            continue  # hard affinity: the group moves together or not at all
        out.append(vm)
    return out


def plan_balance(
    snapshot: ClusterSnapshot,
    state: BalanceState | None = None,
    *,
    now: float,
    config: BalanceConfig | None = None,
    fits: FitsFn | None = None,
) -> BalancePlan:
    """Plan live migrations that lower the cluster score; pure (``now`` only ages cooldowns).

    ``fits(snapshot_after_earlier_moves, vm, host)`` adds the scheduler's filters to the built-in
    ones (``policies.fits.default_fits``)."""
    cfg = config or BalanceConfig()
    st = state or BalanceState()
    recent = {vm: t for vm, t in st.last_moved if now - t < cfg.cooldown_s}
    model = ClusterModel(snapshot, cfg.limits)
    search = Search(model, cfg.weights, cfg.limits, movable(model, now, recent, cfg.cooldown_s))
    before = search.score
    over = before >= cfg.start_threshold
    rounds = st.rounds_over + 1 if over else 0

    def done(reason: str, moves: list[Move], active: bool) -> BalancePlan:
        last = dict(recent)
        last.update({mv.vm_id: now for mv in moves})
        new_state = BalanceState(rounds, active, tuple(sorted(last.items())))
        costs = math.fsum(mv.cost for mv in moves)
        stages = disjoint_stages(moves)
        return BalancePlan(tuple(moves), stages, before, search.score, new_state, reason, costs)

    if not (st.active or rounds >= cfg.hold_rounds):
        why = "below start threshold" if not over else f"holding {rounds}/{cfg.hold_rounds}"
        return done(f"score {before:.4f} {why}", [], False)
    if before <= cfg.stop_threshold:
        return done(f"score {before:.4f} at or below stop threshold", [], False)
    moves = _greedy(search, cfg, fits)
    finished = search.score <= cfg.stop_threshold
    capped = len(moves) >= cfg.max_moves
    if finished:
        why = "balanced"
    elif capped:
        why = "max moves reached"
    else:
        why = "no move gains enough"
    reason = f"{why}: {before:.4f} -> {search.score:.4f} in {len(moves)} moves"
    return done(reason, moves, active=not finished and capped)


def _greedy(search: Search, cfg: BalanceConfig, fits: FitsFn | None) -> list[Move]:
    model = search.model
    moves: list[Move] = []
    if search.n_up < 2:
        return moves
    threshold = max(cfg.min_gain / search.n_up, _MIN_STEP)
    while len(moves) < cfg.max_moves and search.score > cfg.stop_threshold:
        picked = _step(search, cfg, fits, threshold)
        if picked is None:
            break
        vm, d = picked
        assert vm.host is not None
        src, before = vm.host, search.score
        search.commit(vm, d)
        cost = search.cost[vm.id]
        moves.append(
            Move(vm.id, src, model.hosts[d].name, True, before - search.score - cost, cost)
        )
    return moves


def _candidates(search: Search, cfg: BalanceConfig, threshold: float) -> list[tuple[str, int]]:
    """Up to ``fits_tries`` best (VM, host) first moves, widening the sources when none."""
    k = max(1, cfg.sources)
    while True:
        ids, cols, everything = search.sources(k, cfg.sinks)
        found: list[tuple[float, str, int]] = []
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            gain = search.evaluate(chunk, cols)
            flat = gain.ravel()
            take = min(cfg.fits_tries, flat.size)
            top = np.argpartition(-flat, take - 1)[:take] if take < flat.size else range(flat.size)
            for j in top:
                if flat[j] >= threshold:
                    r, d = divmod(int(j), gain.shape[1])
                    found.append((float(flat[j]), chunk[r], int(cols[d])))
        if found or everything:
            found.sort(key=lambda t: -t[0])
            return [(v, d) for _, v, d in found[: cfg.fits_tries]]
        k *= 4


def _step(
    search: Search, cfg: BalanceConfig, fits: FitsFn | None, threshold: float
) -> tuple[VMSnap, int] | None:
    model = search.model
    valid: list[tuple[VMSnap, int]] = []
    for vm_id, d in _candidates(search, cfg, threshold):
        vm = model.vms[vm_id]
        host = model.hosts[d].name
        if not model.fits(vm, host):
            continue
        exact = search.score - search.try_score(vm, d) - search.cost[vm_id]
        if exact < threshold - _EPS:
            continue
        if fits is not None and not fits(search.snapshot(), vm, host):
            continue
        valid.append((vm, d))
        if len(valid) >= max(1, cfg.lookahead):
            break
    if len(valid) <= 1 or cfg.rollout <= 1:
        return valid[0] if valid else None
    best, best_value = valid[0], -math.inf
    for vm, d in valid:
        mark, start = len(search.log), search.score
        search.commit(vm, d)
        spent = search.cost[vm.id]
        for _ in range(cfg.rollout - 1):
            nxt = search.best(max(1, cfg.rollout_sources), threshold, False, cfg.sinks)
            if nxt is None:
                break
            search.commit(model.vms[nxt[0]], nxt[1])
            spent += search.cost[nxt[0]]
        value = start - search.score - spent
        search.rollback(mark)
        if value > best_value + _EPS:
            best, best_value = (vm, d), value
    return best
