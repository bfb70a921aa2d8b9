"""Live migration between two lab hosts with a real (TCG) guest that keeps printing heartbeats.

Most tests share one guest ("pet", booted once per module) and move it from wherever it runs
to the other host: booting a TCG Linux here costs several seconds.
"""

from __future__ import annotations

import threading

import pytest

from drivers.hypervisor.libvirt.migration import LiveMigration, LiveMigrationOptions, migrate_live
from drivers.lab import Lab
from vmmgr.errors import Aborted, Cancelled, DriverError, Unavailable, VmmgrError
from vmmgr.migration import Step

pytestmark = pytest.mark.lab

SLOW = dict(unsafe=True, bandwidth_mib_s=2, schedule=())  # ~90 MiB to send: ~45 s if left alone


@pytest.fixture(scope="module")
def pet(module_guests, conns):
    g = module_guests(host=0, pool="shared")
    hb = g.heartbeat(conns, 0)
    try:
        hb.wait_for(2, timeout_s=120)
    finally:
        hb.stop()
    return g


def _beats_on(g, conns, host: int, after: int | None = None) -> int:
    """Wait for a heartbeat of ``g`` on ``host`` (numbered > after, if given); return it."""
    hb = g.heartbeat(conns, host)
    try:
        n = hb.wait_for((after or 0) + 1, timeout_s=30)
        assert hb.ids == {g.name}
        return n
    finally:
        hb.stop()


def test_live_migration_keeps_the_guest_running(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    dst = 1 - src
    seen = _beats_on(pet, conns, src)
    progress = []
    res = migrate_live(
        pet.dom(conns, src),
        lab.hosts[dst].uri,
        LiveMigrationOptions(unsafe=True, max_downtime_ms=300),
        on_progress=progress.append,
    )
    assert res.mode == "live" and not res.postcopy
    assert res.source_uri == lab.hosts[src].uri and res.dest_uri == lab.hosts[dst].uri
    assert res.downtime_ms is not None and 0 < res.downtime_ms < 10_000
    assert res.data_transferred > 0
    assert pet.name not in conns.names(src)
    assert pet.running_on(conns, dst) and pet.dom(conns, dst).isPersistent()
    # the same guest goes on counting on the destination: no reboot
    hb = pet.heartbeat(conns, dst)
    try:
        assert hb.wait_for(seen + 1, timeout_s=30) > seen
        assert min(hb.seqs) >= seen
    finally:
        hb.stop()
    assert progress[0].phase == "starting" and progress[-1].phase == "completed"
    assert progress[-1].percent == 100.0


def test_auto_converge_migration_completes(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    res = migrate_live(
        pet.dom(conns, src),
        lab.hosts[1 - src].uri,
        LiveMigrationOptions(
            unsafe=True, auto_converge=True, migrate_uri=lab.hosts[1 - src].migration_uri
        ),
    )
    assert res.downtime_ms is not None
    assert pet.running_on(conns, 1 - src) and pet.name not in conns.names(src)


def test_cancel_midway_leaves_the_guest_on_the_source(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    dst = 1 - src
    cancel = threading.Event()
    progress = []

    def on_progress(p) -> None:
        progress.append(p)
        if p.percent > 1:
            cancel.set()

    with pytest.raises(Cancelled, match="still running on the source"):
        migrate_live(
            pet.dom(conns, src),
            lab.hosts[dst].uri,
            LiveMigrationOptions(**SLOW),
            on_progress=on_progress,
            cancel=cancel,
        )
    assert any(0 < p.percent < 100 for p in progress)
    assert progress[-1].phase == "cancelled"
    assert pet.running_on(conns, src)
    assert pet.name not in conns.names(dst)
    _beats_on(pet, conns, src)


def test_cancel_method_of_a_background_migration(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    m = LiveMigration(pet.dom(conns, src), lab.hosts[1 - src].uri, LiveMigrationOptions(**SLOW))
    m.start()
    with pytest.raises(TimeoutError):
        m.wait(timeout_s=1.0)  # still running: the bandwidth limit holds it back
    m.cancel()
    with pytest.raises(Cancelled):
        m.wait(timeout_s=30)
    assert pet.running_on(conns, src)


def test_schedule_aborts_a_migration_that_does_not_converge(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    opts = LiveMigrationOptions(
        unsafe=True,
        bandwidth_mib_s=1,
        schedule=(Step(after_s=0.5, max_downtime_ms=50), Step(after_s=1.5, action="abort")),
    )
    with pytest.raises(Aborted, match=r"not converged after 1\.5s") as e:
        migrate_live(pet.dom(conns, src), lab.hosts[1 - src].uri, opts)
    assert "still running on the source" in str(e.value)
    assert pet.running_on(conns, src)
    assert pet.name not in conns.names(1 - src)


def test_destination_dying_midway_rolls_back_to_the_source(lab: Lab, conns, pet, revive) -> None:
    src = pet.where(conns)
    dst = 1 - src
    seen = _beats_on(pet, conns, src)
    revive(dst)
    killed = []

    def on_progress(p) -> None:
        if p.percent > 1 and not killed:
            killed.append(p.percent)
            lab.kill_host(dst)

    with pytest.raises(VmmgrError) as e:
        migrate_live(
            pet.dom(conns, src),
            lab.hosts[dst].uri,
            LiveMigrationOptions(**SLOW),
            on_progress=on_progress,
        )
    assert killed, "the destination was never killed"
    assert isinstance(e.value, DriverError | Unavailable)
    assert e.value.details["rollback"] == "VM still running on the source"
    assert pet.running_on(conns, src)
    _beats_on(pet, conns, src, after=seen)
    lab.start_host(dst)
    assert pet.name not in conns.names(dst)  # no half-migrated leftover on the restarted host


def test_unreachable_destination_fails_before_touching_the_guest(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    nobody = f"qemu+tcp://{lab.gateway}/system"  # the bridge address: no libvirtd listens there
    with pytest.raises(Unavailable, match="still running on the source"):
        migrate_live(pet.dom(conns, src), nobody, LiveMigrationOptions(unsafe=True))
    assert pet.running_on(conns, src)


def test_schedule_switches_a_slow_migration_to_postcopy(lab: Lab, conns, pet) -> None:
    src = pet.where(conns)
    dst = 1 - src
    seen = _beats_on(pet, conns, src)
    opts = LiveMigrationOptions(
        unsafe=True,
        bandwidth_mib_s=2,
        allow_postcopy=True,
        schedule=(Step(after_s=0.5, max_downtime_ms=100), Step(after_s=1.5, action="postcopy")),
    )
    progress = []
    res = migrate_live(pet.dom(conns, src), lab.hosts[dst].uri, opts, on_progress=progress.append)
    assert res.postcopy
    assert [a.split(" ", 1)[1] for a in res.actions] == [
        "max downtime 100 ms after 0.5s",
        "switch to post-copy after 1.5s",
    ]
    assert "postcopy" in {p.phase for p in progress}
    assert res.total_ms < 40_000  # far below the ~45 s pre-copy alone would need
    assert pet.running_on(conns, dst) and pet.name not in conns.names(src)
    _beats_on(pet, conns, dst, after=seen)


def test_live_migration_copies_a_local_disk(lab: Lab, conns, guests) -> None:
    g = guests(host=0, pool="local")
    hb = g.heartbeat(conns, 0)
    seen = hb.wait_for(2, timeout_s=120)
    hb.stop()
    res = migrate_live(g.dom(conns, 0), lab.hosts[1].uri, LiveMigrationOptions(copy_storage=True))
    assert any("deleted source disk" in a for a in res.actions)
    for i, present in ((0, False), (1, True)):
        pool = conns[i].storagePoolLookupByName("local")
        pool.refresh(0)
        assert (f"{g.name}.qcow2" in pool.listVolumes()) is present
    _beats_on(g, conns, 1, after=seen)
