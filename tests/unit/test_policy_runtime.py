"""Policy runtime on a real APScheduler BackgroundScheduler (short intervals, bounded waits)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_policy_support import cluster, vm

from policies.balance import BalanceConfig
from policies.jobs import BalancePolicy
from policies.plan import Fence, Plan
from policies.runtime import PlanOutcome, PolicyRuntime, PolicySettings
from vmmgr.errors import InvalidArgument, NotFound
from vmmgr.snapshot import ClusterSnapshot

WAIT_S = 10.0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Recorder:
    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.lock = threading.Lock()

    def execute(self, plan: Plan) -> None:
        with self.lock:
            self.plans.append(plan)


class Lease:
    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self.released = False

    def is_leader(self) -> bool:
        return self.leader

    def release(self) -> None:
        self.released = True


class Counting:
    """A policy whose state counts its real runs; it plans a fence of host 'h<count>'."""

    def __init__(
        self, name: str = "count", recommend: bool = False, fail: bool = False, sleep_s: float = 0.0
    ) -> None:
        self.name = name
        self.recommend = recommend
        self.fail = fail
        self.sleep_s = sleep_s
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.lock = threading.Lock()

    def initial_state(self) -> int:
        return 0

    def propose(self, snapshot: ClusterSnapshot, state: Any, now: float) -> tuple[PlanOutcome, Any]:
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.sleep_s:
                time.sleep(self.sleep_s)
            if self.fail:
                raise RuntimeError("planner exploded")
            plan = Plan(self.name, ((Fence(f"h{state}"),),), f"run {state}", self.recommend)
            return PlanOutcome(plan, 1.0, 0.5), state + 1
        finally:
            with self.lock:
                self.active -= 1


def piled() -> ClusterSnapshot:
    return cluster([("a", 8, 16384), ("b", 8, 16384)], [vm(f"v{i}", "a") for i in range(4)])


@pytest.fixture
def runtimes() -> Iterator[list[PolicyRuntime]]:
    made: list[PolicyRuntime] = []
    yield made
    for r in made:
        r.shutdown(wait=True)


def make(runtimes: list[PolicyRuntime], policies: list[Any], **kw: Any) -> PolicyRuntime:
    r = PolicyRuntime(policies, piled, kw.pop("executor", Recorder()), **kw)
    runtimes.append(r)
    return r


def test_a_real_policy_runs_on_its_interval_and_reaches_the_executor(runtimes: list) -> None:
    rec = Recorder()
    bal = BalancePolicy(BalanceConfig(start_threshold=0.0, stop_threshold=0.0, hold_rounds=1))
    r = make(runtimes, [bal], executor=rec, settings={"balance": PolicySettings(True, 0.05)})
    r.start()
    assert wait_for(lambda: len(rec.plans) >= 1)
    plan = rec.plans[0]
    assert plan.policy == "balance" and not plan.empty
    assert r.stats("balance").executed >= 1 and r.stats("balance").runs >= 1


def test_jobs_do_nothing_while_not_leader(runtimes: list) -> None:
    rec, lease, pol = Recorder(), Lease(False), Counting()
    r = make(
        runtimes, [pol], executor=rec, lease=lease, settings={"count": PolicySettings(True, 0.05)}
    )
    r.start()
    assert wait_for(lambda: r.stats("count").skipped_not_leader >= 2)
    assert pol.calls == 0 and rec.plans == []
    lease.leader = True
    assert wait_for(lambda: len(rec.plans) >= 1)
    r.shutdown()
    assert lease.released


def test_dry_run_changes_no_state_and_runs_advance_it(runtimes: list) -> None:
    rec, pol = Recorder(), Counting()
    r = make(runtimes, [pol], executor=rec, settings={"count": PolicySettings(False, 60)})
    plan, before, after = r.plan("count")
    assert plan.reason == "run 0" and (before, after) == (1.0, 0.5)
    assert r.plan("count")[0].reason == "run 0"
    r.run_once("count")
    assert rec.plans[0].reason == "run 0"
    assert r.plan("count")[0].reason == "run 1"
    assert r.stats("count").last_reason == "run 0"


def test_recommend_only_and_empty_plans_are_not_executed(runtimes: list) -> None:
    rec = Recorder()
    even = BalancePolicy()
    r = make(runtimes, [Counting(recommend=True), even], executor=rec)
    assert r.run_once("count") is not None and r.run_once("balance") is not None
    assert rec.plans == []
    assert r.stats("count").runs == 1 and r.stats("count").executed == 0


def test_reconfigure_disables_enables_and_changes_interval(runtimes: list) -> None:
    pol = Counting()
    r = make(runtimes, [pol], settings={"count": PolicySettings(True, 0.05)})
    r.start()
    assert wait_for(lambda: pol.calls >= 1)
    r.reconfigure("count", False, 0.05)
    assert r._scheduler.get_job("count") is None
    assert r.settings("count") == PolicySettings(False, 0.05)
    settled = pol.calls
    time.sleep(0.3)
    assert pol.calls <= settled + 1  # at most the run already in flight
    r.reconfigure("count", True, 3600)
    job = r._scheduler.get_job("count")
    assert job is not None and job.trigger.interval.total_seconds() == 3600
    assert job.max_instances == 1 and job.coalesce
    r.reconfigure("count", True, 0.05)
    n = pol.calls
    assert wait_for(lambda: pol.calls > n)


def test_a_failing_policy_is_recorded_and_keeps_its_job(runtimes: list) -> None:
    pol = Counting(fail=True)
    r = make(runtimes, [pol], settings={"count": PolicySettings(True, 0.05)})
    r.start()
    assert wait_for(lambda: r.stats("count").errors >= 2)
    assert "planner exploded" in r.stats("count").last_error
    assert r._scheduler.get_job("count") is not None


def test_runs_of_one_policy_never_overlap(runtimes: list) -> None:
    pol = Counting(sleep_s=0.15)
    r = make(runtimes, [pol], settings={"count": PolicySettings(True, 0.02)})
    r.start()
    assert wait_for(lambda: pol.calls >= 3)
    assert pol.max_active == 1


def test_bad_names_and_settings_are_refused(runtimes: list) -> None:
    with pytest.raises(InvalidArgument, match="duplicate"):
        PolicyRuntime([Counting(), Counting()], piled, Recorder())
    with pytest.raises(InvalidArgument, match="unknown policies: nope"):
        PolicyRuntime([Counting()], piled, Recorder(), settings={"nope": PolicySettings()})
    with pytest.raises(InvalidArgument) as exc:
        PolicyRuntime([Counting()], piled, Recorder(), settings={"count": PolicySettings(True, 0)})
    assert exc.value.field == "interval_s"
    r = make(runtimes, [Counting()])
    with pytest.raises(NotFound):
        r.plan("missing")
    with pytest.raises(NotFound):
        r.reconfigure("missing", True, 1)
    with pytest.raises(InvalidArgument):
        r.reconfigure("count", True, -1)
    assert r.names() == ["count"]
