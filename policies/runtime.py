"""Policy runtime: every policy is an APScheduler 3.x job (BackgroundScheduler) that takes a
fresh snapshot, runs its pure planner and hands a non-empty plan to the ONE shared executor.

- Jobs run with ``max_instances=1`` and ``coalesce=True``: a slow run is never overlapped, and
  missed runs collapse into one.
- Jobs act only while this replica holds the leader lease (Postgres advisory lock in production;
  SQLite deployments are single-replica: ``AlwaysLeader``). A non-leader tick does nothing.
- A planner's carried state (hysteresis, cooldowns, fence history) lives here, per policy, and is
  only advanced by real runs: ``plan(name)`` is a dry run that changes nothing.
- Recommend-only plans and empty plans are recorded, never executed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from policies.plan import Plan
from vmmgr.errors import InvalidArgument, NotFound
from vmmgr.snapshot import ClusterSnapshot

log = logging.getLogger(__name__)


class PlanExecutor(Protocol):
    """Carries out a plan (the lead's implementation runs it through Operations, stage by stage,
    with concurrency limits). Raises on failure; the runtime records the error."""

    def execute(self, plan: Plan) -> None: ...


class LeaderLease(Protocol):
    def is_leader(self) -> bool:
        """Acquire or renew the lease; True while this replica may act. Must be quick."""
        ...

    def release(self) -> None: ...


class AlwaysLeader:
    """Single-replica deployments (SQLite): always the leader."""

    def is_leader(self) -> bool:
        return True

    def release(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    plan: Plan
    score_before: float | None = None
    score_after: float | None = None


class Policy(Protocol):
    """A pure planner plus the state it carries between runs."""

    name: str

    def initial_state(self) -> Any: ...

    def propose(self, snapshot: ClusterSnapshot, state: Any, now: float) -> tuple[PlanOutcome, Any]:
        """Plan from ``snapshot``; return the outcome and the state for the next run."""
        ...


@dataclass(frozen=True, slots=True)
class PolicySettings:
    enabled: bool = True
    interval_s: float = 60.0


@dataclass(slots=True)
class PolicyStats:
    runs: int = 0
    executed: int = 0  # plans handed to the executor
    skipped_not_leader: int = 0
    errors: int = 0
    last_error: str = ""
    last_reason: str = ""
    last_run: float | None = None


@dataclass(slots=True)
class _Entry:
    policy: Policy
    settings: PolicySettings
    state: Any
    stats: PolicyStats = field(default_factory=PolicyStats)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PolicyRuntime:
    def __init__(
        self,
        policies: Sequence[Policy],
        snapshot: Callable[[], ClusterSnapshot],
        executor: PlanExecutor,
        lease: LeaderLease | None = None,
        settings: Mapping[str, PolicySettings] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        scheduler: BackgroundScheduler | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._executor = executor
        self._lease: LeaderLease = lease or AlwaysLeader()
        self._clock = clock
        self._scheduler = scheduler or BackgroundScheduler(timezone="UTC")
        self._entries: dict[str, _Entry] = {}
        conf = settings or {}
        for p in policies:
            if p.name in self._entries:
                raise InvalidArgument("policies", f"duplicate policy name {p.name!r}")
            s = conf.get(p.name, PolicySettings())
            _check(s.interval_s)
            self._entries[p.name] = _Entry(p, s, p.initial_state())
        unknown = set(conf) - set(self._entries)
        if unknown:
            raise InvalidArgument("settings", f"unknown policies: {', '.join(sorted(unknown))}")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        for name, e in self._entries.items():
            if e.settings.enabled:
                self._schedule(name, e.settings.interval_s)
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        self._lease.release()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def settings(self, name: str) -> PolicySettings:
        return self._entry(name).settings

    def stats(self, name: str) -> PolicyStats:
        return self._entry(name).stats

    def reconfigure(self, name: str, enabled: bool, interval_s: float) -> None:
        """Enable/disable a policy or change its interval, effective immediately."""
        e = self._entry(name)
        _check(interval_s)
        e.settings = PolicySettings(enabled, interval_s)
        job = self._scheduler.get_job(name)
        if not enabled:
            if job is not None:
                self._scheduler.remove_job(name)
            return
        if job is None:
            self._schedule(name, interval_s)
        else:
            self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=interval_s))

    # -- running --------------------------------------------------------------------------------
    def plan(self, name: str) -> tuple[Plan, float | None, float | None]:
        """Dry run (``vmmgr policy plan NAME``): what the policy would do now; changes nothing."""
        e = self._entry(name)
        with e.lock:
            outcome, _ = e.policy.propose(self._snapshot(), e.state, self._clock())
        return outcome.plan, outcome.score_before, outcome.score_after

    def run_once(self, name: str) -> PlanOutcome | None:
        """One real run (what the job does); None when not the leader."""
        e = self._entry(name)
        if not self._lease.is_leader():
            e.stats.skipped_not_leader += 1
            return None
        with e.lock:
            now = self._clock()
            outcome, new_state = e.policy.propose(self._snapshot(), e.state, now)
            e.state = new_state
            e.stats.runs += 1
            e.stats.last_run = now
            e.stats.last_reason = outcome.plan.reason
            if not outcome.plan.empty and not outcome.plan.recommend_only:
                self._executor.execute(outcome.plan)
                e.stats.executed += 1
        return outcome

    def _tick(self, name: str) -> None:
        try:
            self.run_once(name)
        except Exception as exc:  # a policy failure must not kill its job
            e = self._entries[name]
            e.stats.errors += 1
            e.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("policy %s failed", name)

    def _schedule(self, name: str, interval_s: float) -> None:
        self._scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=interval_s),
            args=(name,),
            id=name,
            name=f"policy:{name}",
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    def _entry(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            raise NotFound(f"no policy named {name!r}", field="name")
        return e


def _check(interval_s: float) -> None:
    if not interval_s > 0:
        raise InvalidArgument("interval_s", "must be positive")
