"""Migration concurrency limits: the pure admission rule and the thread-safe limiter."""

from __future__ import annotations

import threading
import time

import pytest

from vmmgr.errors import InvalidArgument, ResourceExhausted
from vmmgr.migration import MigrationLimiter, MigrationLimits, MigrationSlot, admit

LIMITS = MigrationLimits(per_host_outgoing=1, per_host_incoming=2, per_cluster=3)


def slot(vm: str, src: str, dst: str) -> MigrationSlot:
    return MigrationSlot(vm, src, dst)


def test_first_migration_is_admitted() -> None:
    assert admit([], slot("a", "h1", "h2"), LIMITS).admitted


def test_outgoing_limit() -> None:
    v = admit([slot("a", "h1", "h2")], slot("b", "h1", "h3"), LIMITS)
    assert not v.admitted and "h1 already sends 1" in v.reason and "limit 1" in v.reason


def test_incoming_limit() -> None:
    running = [slot("a", "h1", "h9"), slot("b", "h2", "h9")]
    v = admit(running, slot("c", "h3", "h9"), LIMITS)
    assert not v.admitted and "h9 already receives 2" in v.reason
    assert admit(running, slot("c", "h3", "h8"), LIMITS).admitted


def test_cluster_limit() -> None:
    running = [slot("a", "h1", "h2"), slot("b", "h3", "h4"), slot("c", "h5", "h6")]
    v = admit(running, slot("d", "h7", "h8"), LIMITS)
    assert not v.admitted and "cluster limit of 3" in v.reason


def test_zero_means_unlimited() -> None:
    free = MigrationLimits(0, 0, 0)
    running = [slot(str(i), "h1", "h2") for i in range(50)]
    assert admit(running, slot("x", "h1", "h2"), free).admitted


def test_same_vm_twice_and_same_host_are_refused() -> None:
    assert (
        "already migrating"
        in admit([slot("a", "h1", "h2")], slot("a", "h3", "h4"), MigrationLimits(0, 0, 0)).reason
    )
    assert not admit([], slot("a", "h1", "h1"), LIMITS).admitted


def test_negative_limits_are_invalid() -> None:
    with pytest.raises(InvalidArgument) as e:
        MigrationLimits(per_host_incoming=-1)
    assert e.value.field == "migration_limits.per_host_incoming"


def test_limiter_refuses_at_once_without_timeout() -> None:
    lim = MigrationLimiter(LIMITS)
    lim.acquire(slot("a", "h1", "h2"))
    with pytest.raises(ResourceExhausted, match="limit 1") as e:
        lim.acquire(slot("b", "h1", "h3"))
    assert e.value.details == {"source": "h1", "dest": "h3"}
    assert lim.running() == (slot("a", "h1", "h2"),)


def test_limiter_waits_for_a_release() -> None:
    lim = MigrationLimiter(LIMITS)
    first = slot("a", "h1", "h2")
    lim.acquire(first)
    admitted: list[float] = []

    def waiter() -> None:
        with lim.slot(slot("b", "h1", "h3"), timeout_s=10):
            admitted.append(time.monotonic())

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    assert admitted == []
    released = time.monotonic()
    lim.release(first)
    t.join(5)
    assert admitted and admitted[0] >= released
    assert lim.running() == ()


def test_limiter_times_out() -> None:
    lim = MigrationLimiter(LIMITS)
    lim.acquire(slot("a", "h1", "h2"))
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted):
        lim.acquire(slot("b", "h1", "h3"), timeout_s=0.3)
    assert time.monotonic() - t0 >= 0.3


def test_limiter_does_not_wait_for_a_vm_already_migrating() -> None:
    lim = MigrationLimiter(LIMITS)
    lim.acquire(slot("a", "h1", "h2"))
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted, match="already migrating"):
        lim.acquire(slot("a", "h1", "h3"), timeout_s=30)
    assert time.monotonic() - t0 < 1


def test_slot_is_released_when_the_body_fails() -> None:
    lim = MigrationLimiter(LIMITS)
    with pytest.raises(RuntimeError), lim.slot(slot("a", "h1", "h2")):
        raise RuntimeError("migration failed")
    assert lim.running() == ()
    assert lim.try_acquire(slot("b", "h1", "h2")).admitted


def test_concurrent_acquires_never_exceed_the_limit() -> None:
    lim = MigrationLimiter(MigrationLimits(per_host_outgoing=2, per_host_incoming=0, per_cluster=0))
    peak = [0]
    lock = threading.Lock()
    active = [0]

    def worker(i: int) -> None:
        with lim.slot(slot(f"vm{i}", "h1", f"d{i}"), timeout_s=10):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2
