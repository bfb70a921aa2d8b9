"""The built-in policies as runtime jobs: each wraps a pure planner and the state it carries.

``BalancePolicy``, ``PowerPolicy``, ``ScalePolicy`` and ``RecoverPolicy`` implement
``policies.runtime.Policy``; the daemon builds them from config and hands them to
``PolicyRuntime``. Inputs that are not in the snapshot (load history for forecasts, host
observations for failure detection) come from callables the daemon provides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from policies.balance import BalanceConfig, BalanceState, plan_balance
from policies.fits import FitsFn
from policies.forecast import forecast
from policies.plan import Action, Plan
from policies.power import PowerConfig, plan_power
from policies.recover import (
    DetectorConfig,
    FenceGuardConfig,
    Health,
    HostHealth,
    HostObservation,
    PlaceBatch,
    detect_all,
    guard_fences,
    plan_restarts,
)
from policies.runtime import PlanOutcome
from policies.scale import ScaleState, ScalingGroup, plan_scale
from policies.score import cluster_score
from vmmgr.snapshot import ClusterSnapshot


class BalancePolicy:
    name = "balance"

    def __init__(self, config: BalanceConfig | None = None, fits: FitsFn | None = None) -> None:
        self.config = config or BalanceConfig()
        self.fits = fits

    def initial_state(self) -> BalanceState:
        return BalanceState()

    def propose(
        self, snapshot: ClusterSnapshot, state: BalanceState, now: float
    ) -> tuple[PlanOutcome, BalanceState]:
        p = plan_balance(snapshot, state, now=now, config=self.config, fits=self.fits)
        return PlanOutcome(p.to_plan(self.name), p.score_before, p.score_after), p.state


class PowerPolicy:
    name = "power"

    def __init__(self, config: PowerConfig | None = None, fits: FitsFn | None = None) -> None:
        self.config = config or PowerConfig()
        self.fits = fits

    def initial_state(self) -> None:
        return None

    def propose(
        self, snapshot: ClusterSnapshot, state: None, now: float
    ) -> tuple[PlanOutcome, None]:
        p = plan_power(snapshot, self.config, fits=self.fits)
        return PlanOutcome(p.to_plan(self.name), p.score_before, p.score_after), None


class ScalePolicy:
    """All scaling groups in one job. ``history(group)`` returns the group's total load, one
    sample per ``season_length``-th of a season (e.g. 5-minute samples, 288 a day)."""

    name = "scale"

    def __init__(
        self,
        groups: Sequence[ScalingGroup],
        history: Callable[[str], Sequence[float]],
        *,
        horizon: int = 6,
        season_length: int = 288,
    ) -> None:
        for g in groups:
            g.validate()
        self.groups = tuple(groups)
        self.history = history
        self.horizon = horizon
        self.season_length = season_length

    def initial_state(self) -> dict[str, ScaleState]:
        return {g.name: ScaleState() for g in self.groups}

    def propose(
        self, snapshot: ClusterSnapshot, state: Mapping[str, ScaleState], now: float
    ) -> tuple[PlanOutcome, dict[str, ScaleState]]:
        new_state = dict(state)
        actions: list[Action] = []
        reasons: list[str] = []
        for g in self.groups:
            series = self.history(g.name)
            pred = forecast(series, self.horizon, self.season_length).values if series else ()
            d = plan_scale(snapshot, g, pred, state.get(g.name), now=now)
            new_state[g.name] = d.state
            actions += [a for stage in d.to_plan().stages for a in stage]
            reasons.append(d.reason)
        plan = Plan(self.name, (tuple(actions),) if actions else (), "; ".join(reasons))
        return PlanOutcome(plan), new_state


@dataclass(frozen=True, slots=True)
class RecoverState:
    health: Mapping[str, HostHealth] = field(default_factory=dict)
    fences: tuple[tuple[str, float], ...] = ()  # (host, time) inside the guard window
    handled: frozenset[str] = frozenset()  # failed hosts already fenced and restarted from


class RecoverPolicy:
    """Detect failed hosts, fence (guarded against storms) and restart their HA VMs."""

    name = "recover"

    def __init__(
        self,
        observe: Callable[[], Sequence[HostObservation]],
        place_batch: PlaceBatch | None = None,
        *,
        detector: DetectorConfig | None = None,
        guard: FenceGuardConfig | None = None,
    ) -> None:
        self.observe = observe
        self.place_batch = place_batch
        self.detector = detector or DetectorConfig()
        self.guard = guard or FenceGuardConfig()

    def initial_state(self) -> RecoverState:
        return RecoverState()

    def propose(
        self, snapshot: ClusterSnapshot, state: RecoverState, now: float
    ) -> tuple[PlanOutcome, RecoverState]:
        health = detect_all(state.health, self.observe(), now, self.detector)
        failed = sorted(h for h, s in health.items() if s.state == Health.FAILED)
        handled = frozenset(h for h in state.handled if h in failed)  # recovered hosts reset
        pending = [h for h in failed if h not in handled]
        decision = guard_fences(pending, state.fences, len(snapshot.hosts), now, self.guard)
        if decision.fence:
            restart = plan_restarts(
                snapshot, decision.fence, self.place_batch, fence=decision.fence
            )
            plan = restart.to_plan(self.name)
        else:
            plan = Plan(self.name, (), "no failed host" if not pending else "fencing held")
        if decision.held:
            plan = Plan(
                plan.policy,
                plan.stages,
                f"{plan.reason}; held by fence-storm guard: {', '.join(decision.held)}",
            )
        score = cluster_score(snapshot)
        new_state = RecoverState(health, decision.history, handled | set(decision.fence))
        return PlanOutcome(plan, score, None), new_state
