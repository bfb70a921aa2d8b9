"""Operations: outcome recorded in the job's own transaction, finished ones served from memory,
and which targets have an operation running here."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import delete
from sqlmodel import col
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr import calls
from vmmgr.errors import NotFound
from vmmgr.services.events import EventBus, EventRecord
from vmmgr.services.operations import OperationContext, Operations
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Operation, OperationState


def _ops(store: Store) -> Operations:
    def persist(rec: EventRecord) -> int:
        return 0

    return Operations(store, EventBus(persist), workers=2)


def _vm(store: Store, name: str) -> VM:
    with store.session() as s:
        return repo.add_vm(s, VM(name=name, vcpus=1, memory_mib=64, state="creating"))


def test_success_recorded_in_the_jobs_transaction_commits_with_its_change(store: Store) -> None:
    ops, vm = _ops(store), _vm(store, "a")

    def job(ctx: OperationContext) -> dict[str, str]:
        with store.session() as s:
            repo.update_vm(s, vm.id, {"state": "running"})
            ctx.succeed_in(s, {"vm_state": "running"})
        return {"vm_state": "running"}

    op, done = ops.wait(ops.submit("vm.create", vm.id, job).id, 10)
    assert done and op.state == OperationState.SUCCEEDED and op.result == {"vm_state": "running"}
    with store.read_session() as s:
        assert repo.get_operation(s, op.id).state == OperationState.SUCCEEDED
        assert repo.get_vm(s, vm.id).state == "running"
    ops.shutdown()


def test_a_failure_after_succeed_in_rolls_both_back(store: Store) -> None:
    ops, vm = _ops(store), _vm(store, "b")

    def job(ctx: OperationContext) -> dict[str, str]:
        with store.session() as s:
            repo.update_vm(s, vm.id, {"state": "running"})
            ctx.succeed_in(s, {})
            raise RuntimeError("the commit never happens")

    op, done = ops.wait(ops.submit("vm.create", vm.id, job).id, 10)
    assert done and op.state == OperationState.FAILED and "commit never" in op.error_message
    with store.read_session() as s:
        assert repo.get_vm(s, vm.id).state == "creating"
    ops.shutdown()


def test_busy_while_running_and_finished_ops_come_from_memory(store: Store) -> None:
    ops, vm = _ops(store), _vm(store, "c")
    release = threading.Event()
    started = time.monotonic()
    op = ops.submit("vm.delete", vm.id, lambda ctx: release.wait(10) and None)
    assert ops.busy(vm.id) and not ops.busy("someone-else")
    release.set()
    done, finished = ops.wait(op.id, 10)
    assert finished and done.state == OperationState.SUCCEEDED and not ops.busy(vm.id)
    # something libvirt told while the operation ran is still the operation's business
    assert ops.busy(vm.id, since=started) and not ops.busy(vm.id, since=time.monotonic())
    with store.session() as s:  # a finished operation never changes: memory answers for it
        s.execute(delete(Operation).where(col(Operation.id) == op.id))
    assert ops.get(op.id) is done
    with pytest.raises(NotFound):
        Operations(store, ops.events).get(op.id)
    ops.shutdown()


def test_only_an_id_generated_for_the_call_being_served_is_new() -> None:
    """A create skips the retry lookup only for such an id: no earlier call can hold it."""
    assert not calls.is_new_request_id("r1")  # outside any RPC
    with calls.serving(calls.Call("r1", True, None)):
        assert calls.is_new_request_id("r1")
        assert not calls.is_new_request_id("r2")
    with calls.serving(calls.Call("r1", False, None)):  # the client chose it: may be a retry
        assert not calls.is_new_request_id("r1")
    assert calls.current() is None


def test_clean_up_runs_after_the_end_is_announced_whatever_the_outcome(store: Store) -> None:
    ops = _ops(store)
    released, ran = threading.Event(), []

    def tidy() -> None:
        released.wait(10)
        ran.append("tidy")

    def job(ctx: OperationContext) -> dict[str, str]:
        ctx.after(tidy)
        ctx.after(lambda: 1 / 0)  # a failing clean-up is logged; the next still runs
        ctx.after(lambda: ran.append("second"))
        return {"ok": "1"}

    op, done = ops.wait(ops.submit("vm.create", "t", job).id, 10)
    assert done and op.state == OperationState.SUCCEEDED and ran == []  # waiter did not wait
    released.set()
    deadline = time.monotonic() + 10
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["tidy", "second"]

    def failing(ctx: OperationContext) -> dict[str, str]:
        ctx.after(lambda: ran.append("after failure"))
        raise NotFound("gone")

    op, done = ops.wait(ops.submit("vm.create", "t2", failing).id, 10)
    assert done and op.state == OperationState.FAILED
    deadline = time.monotonic() + 10
    while "after failure" not in ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran[-1] == "after failure"


def test_released_clean_up_runs_on_another_worker_while_the_job_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    ops = _ops(store)
    tidied, job_thread, tidy_thread = threading.Event(), [], []

    def tidy() -> None:
        tidy_thread.append(threading.get_ident())
        tidied.set()

    def job(ctx: OperationContext) -> dict[str, str]:
        job_thread.append(threading.get_ident())
        ctx.release(lambda: 1 / 0)  # logged, never raised into the job
        ctx.release(tidy)
        assert tidied.wait(10)  # ran meanwhile: the job is still going
        return {"ok": "1"}

    with caplog.at_level(logging.ERROR):
        op, done = ops.wait(ops.submit("vm.create", "t", job).id, 10)
    assert done and op.state == OperationState.SUCCEEDED
    assert tidy_thread and tidy_thread != job_thread
    assert any("clean-up failed" in r.getMessage() for r in caplog.records)


def test_released_clean_up_runs_inline_once_the_pool_shuts_down(store: Store) -> None:
    ops = _ops(store)
    ran: list[int] = []
    go = threading.Event()

    def job(ctx: OperationContext) -> dict[str, str]:
        go.wait(10)  # by now shutdown() refuses new work
        ctx.release(lambda: ran.append(threading.get_ident()))
        ran.append(-threading.get_ident())
        return {}

    ops.submit("vm.create", "t", job)
    stopper = threading.Thread(target=ops.shutdown)
    stopper.start()
    deadline = time.monotonic() + 10
    while not ops._pool._shutdown and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    go.set()
    stopper.join(10)
    assert len(ran) == 2 and ran[0] == -ran[1]  # ran on the job's own thread, before it went on
