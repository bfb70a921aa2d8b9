"""The convergence schedule step function (pure)."""

from __future__ import annotations

import pytest

from vmmgr.errors import InvalidArgument
from vmmgr.migration import JobSample, ScheduleState, Step, next_action, validate_schedule
from vmmgr.migration.schedule import DEFAULT_SCHEDULE, about_to_complete, transfer_started

SCHED = (
    Step(after_s=10, max_downtime_ms=300),
    Step(after_s=20, max_downtime_ms=1000),
    Step(after_s=30, action="postcopy"),
)
# a transfer in progress that is far from done: 500 MB left at 10 MB/s
BUSY = JobSample(
    data_total=1_000_000_000, data_remaining=500_000_000, bandwidth_bps=10_000_000, iteration=2
)


def run(schedule, times, stats=BUSY, state=None):
    """Apply next_action at each time, feeding the state back; return the actions."""
    state = state or ScheduleState()
    out = []
    for t in times:
        a = next_action(schedule, t, stats, state)
        state = a.state
        out.append(a)
    return out


def test_nothing_happens_before_the_first_step() -> None:
    a = next_action(SCHED, 9.9, BUSY, ScheduleState())
    assert a.kind == "none" and a.state == ScheduleState()


def test_steps_apply_in_order_each_once() -> None:
    acts = run(SCHED, [10, 11, 20, 25])
    assert [a.kind for a in acts] == ["set_downtime", "none", "set_downtime", "none"]
    assert [a.max_downtime_ms for a in acts if a.kind == "set_downtime"] == [300, 1000]
    assert acts[-1].state.next_step == 2 and acts[-1].state.max_downtime_ms == 1000


def test_several_due_downtime_steps_collapse_to_the_last_value() -> None:
    a = next_action(SCHED, 25, BUSY, ScheduleState())
    assert a.kind == "set_downtime" and a.max_downtime_ms == 1000
    assert a.state.next_step == 2


def test_a_due_action_waits_for_the_downtime_before_it() -> None:
    acts = run(SCHED, [35, 35], state=ScheduleState(postcopy_allowed=True))
    assert [a.kind for a in acts] == ["set_downtime", "postcopy"]
    assert acts[0].max_downtime_ms == 1000
    assert acts[0].state.next_step == 2  # the action step is not consumed by the downtime call


def test_postcopy_when_allowed_then_nothing_more() -> None:
    acts = run(SCHED, [35, 35, 40, 100], state=ScheduleState(postcopy_allowed=True))
    assert [a.kind for a in acts] == ["set_downtime", "postcopy", "none", "none"]
    assert acts[1].state.postcopy_started
    assert "post-copy" in acts[1].reason


def test_postcopy_step_becomes_abort_when_postcopy_not_allowed() -> None:
    acts = run(SCHED, [35, 35])
    assert acts[1].kind == "abort"
    assert "post-copy not allowed" in acts[1].reason


def test_abort_step() -> None:
    sched = (Step(after_s=5, action="abort"),)
    a = next_action(sched, 5, BUSY, ScheduleState())
    assert a.kind == "abort" and a.reason == "not converged after 5s"
    assert a.state.next_step == 1
    assert next_action(sched, 6, BUSY, a.state).kind == "none"


def test_escalation_is_held_while_the_migration_is_about_to_complete() -> None:
    nearly = JobSample(data_total=10**9, data_remaining=1_000_000, bandwidth_bps=10**7, iteration=3)
    sched = (Step(after_s=5, action="abort"),)
    held = next_action(sched, 5, nearly, ScheduleState(max_downtime_ms=300))
    assert held.kind == "none" and held.state.next_step == 0
    assert "about to complete" in held.reason
    assert next_action(sched, 6, BUSY, held.state).kind == "abort"


def test_nothing_is_applied_before_memory_transfer_starts() -> None:
    preparing = JobSample()  # libvirt still preparing the destination: no totals yet
    assert not transfer_started(preparing) and not transfer_started(None)
    a = next_action(SCHED, 12, preparing, ScheduleState())
    assert a.kind == "none" and a.state.next_step == 0
    assert next_action(SCHED, 12, None, ScheduleState()).kind == "none"
    assert next_action(SCHED, 12, BUSY, ScheduleState()).kind == "set_downtime"


def test_about_to_complete_needs_bandwidth_and_a_finished_pass() -> None:
    assert not about_to_complete(None, 300)
    assert not about_to_complete(JobSample(data_remaining=1, iteration=0, bandwidth_bps=1e9), 300)
    assert not about_to_complete(JobSample(data_remaining=1, iteration=2, bandwidth_bps=0), 300)
    # default downtime 300 ms when none applied: 3 MB fit at 10 MB/s
    assert about_to_complete(
        JobSample(data_remaining=3_000_000, iteration=1, bandwidth_bps=10_000_000), 0
    )
    assert not about_to_complete(
        JobSample(data_remaining=3_000_001, iteration=1, bandwidth_bps=10_000_000), 0
    )


def test_empty_schedule_never_acts() -> None:
    assert next_action((), 1e6, BUSY, ScheduleState()).kind == "none"


def test_default_schedule_is_valid_and_ends_in_abort() -> None:
    assert validate_schedule(DEFAULT_SCHEDULE) == DEFAULT_SCHEDULE
    assert DEFAULT_SCHEDULE[-1].action == "abort"


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ((Step(-1, 100),), "schedule[0].after_s"),
        ((Step(5, 100), Step(4, 200)), "schedule[1].after_s"),
        ((Step(5, action="explode"),), "schedule[0].action"),  # type: ignore[arg-type]
        ((Step(5, -3),), "schedule[0].max_downtime_ms"),
        ((Step(5),), "schedule[0]"),
    ],
)
def test_invalid_schedules_name_the_field(steps, field) -> None:
    with pytest.raises(InvalidArgument) as e:
        validate_schedule(steps)
    assert e.value.field == field
