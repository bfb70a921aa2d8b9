"""The migration driver against libvirt's test driver (private test:///FILE hosts).

The test driver cannot migrate, which makes it the place to check every refusal and the
failure/rollback path of live migration, and the whole stop/define/start/undefine sequence of a
(diskless, shared-storage) cold migration including its undo.
"""

from __future__ import annotations

import threading
import uuid

import libvirt
import pytest

from drivers.hypervisor.libvirt.migration import (
    LiveMigration,
    LiveMigrationOptions,
    cold_migrate,
    live_flags,
    live_params,
    migrate_live,
)
from vmmgr.errors import AlreadyExists, Cancelled, FailedPrecondition, InvalidArgument, VmmgrError
from vmmgr.migration import Step

pytestmark = pytest.mark.libvirt

NODE = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
    <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>8388608</memory>
</node>
"""
PCI = (
    "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
    "<address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source></hostdev>"
)
MDEV = (
    "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
    "<address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source></hostdev>"
)
DISK = (
    "<disk type='file' device='disk'><source file='/nowhere/disk.qcow2'/>"
    "<target dev='vda' bus='virtio'/></disk>"
)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)


@pytest.fixture
def hosts(tmp_path):
    path = tmp_path / "node.xml"
    path.write_text(NODE)
    a = libvirt.open(f"test://{path}")
    b = libvirt.open(f"test://{path}")  # a second, private instance
    yield a, b
    a.close()
    b.close()


def define(conn, devices: str = "", start: bool = True, name: str = "vm1"):
    xml = (
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"<devices>{devices}</devices></domain>"
    )
    dom = conn.defineXML(xml)
    if start:
        dom.create()
    return dom


def test_flags_and_params() -> None:
    base = LiveMigrationOptions()
    f = live_flags(base)
    for flag in ("LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE"):
        assert f & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    for flag in ("POSTCOPY", "AUTO_CONVERGE", "NON_SHARED_DISK", "UNSAFE"):
        assert not f & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    full = LiveMigrationOptions(
        allow_postcopy=True,
        auto_converge=True,
        copy_storage=True,
        unsafe=True,
        migrate_uri="tcp://10.0.0.2",
        listen_address="10.0.0.2",
        bandwidth_mib_s=50,
        persist_dest=False,
        undefine_source=False,
    )
    f = live_flags(full)
    for flag in ("POSTCOPY", "AUTO_CONVERGE", "NON_SHARED_DISK", "UNSAFE"):
        assert f & getattr(libvirt, f"VIR_MIGRATE_{flag}")
    assert not f & libvirt.VIR_MIGRATE_PERSIST_DEST and not f & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert live_params(full) == {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2",
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "10.0.0.2",
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 50,
    }
    assert live_params(base) == {}


def test_live_refused_for_a_stopped_vm(hosts) -> None:
    a, b = hosts
    dom = define(a, start=False)
    with pytest.raises(FailedPrecondition, match="not running"):
        migrate_live(dom, b.getURI())


def test_live_refused_for_whole_pci_passthrough(hosts) -> None:
    a, b = hosts
    dom = define(a, PCI)
    with pytest.raises(FailedPrecondition, match=r"whole PCI passthrough \(0000:3b:00\.0\)"):
        migrate_live(dom, b.getURI())
    assert dom.isActive()


def test_postcopy_refused_for_vfio_mdev(hosts) -> None:
    a, b = hosts
    dom = define(a, MDEV)
    with pytest.raises(FailedPrecondition) as e:
        migrate_live(dom, b.getURI(), LiveMigrationOptions(allow_postcopy=True))
    assert e.value.field == "allow_post_copy"


def test_invalid_schedule_is_refused_before_anything_happens(hosts) -> None:
    a, b = hosts
    dom = define(a)
    with pytest.raises(InvalidArgument) as e:
        LiveMigration(dom, b.getURI(), LiveMigrationOptions(schedule=(Step(5),)))
    assert e.value.field == "options.schedule[0]"


def test_failed_migration_reports_and_keeps_the_vm_running(hosts) -> None:
    a, b = hosts
    dom = define(a)
    progress = []
    with pytest.raises(VmmgrError) as e:
        migrate_live(dom, b.getURI(), on_progress=progress.append)
    assert e.value.details["rollback"] == "VM still running on the source"
    assert "still running on the source" in str(e.value)
    assert [p.phase for p in progress] == ["starting", "failed"]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_rollback_resumes_a_vm_left_paused(hosts) -> None:
    a, b = hosts
    dom = define(a)

    def pause_at_start(p) -> None:  # stands in for libvirt leaving the source paused
        if p.phase == "starting":
            dom.suspend()

    with pytest.raises(VmmgrError) as e:
        migrate_live(dom, b.getURI(), on_progress=pause_at_start)
    assert e.value.details["rollback"] == "VM was paused on the source and has been resumed"
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_rollback_leaves_a_vm_paused_by_its_owner_paused(hosts) -> None:
    a, b = hosts
    dom = define(a)
    dom.suspend()
    with pytest.raises(VmmgrError, match="still paused on the source, as before"):
        migrate_live(dom, b.getURI())
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_rollback_reports_a_source_that_stopped(hosts) -> None:
    a, b = hosts
    dom = define(a)

    def crash_at_start(p) -> None:
        if p.phase == "starting":
            dom.destroy()

    with pytest.raises(VmmgrError, match="is shut off on the source") as e:
        migrate_live(dom, b.getURI(), on_progress=crash_at_start)
    assert e.value.details["rollback"] == "source not running"


def test_a_broken_progress_callback_does_not_break_the_migration(hosts) -> None:
    a, b = hosts
    dom = define(a, start=False)

    def boom(p) -> None:
        raise RuntimeError("observer bug")

    res = cold_migrate(dom, b, copy_storage=False, on_progress=boom)
    assert res.mode == "cold"


def test_cold_migration_of_a_running_vm(hosts) -> None:
    a, b = hosts
    dom = define(a)
    uid = dom.UUIDString()
    progress = []
    res = cold_migrate(dom, b, copy_storage=False, on_progress=progress.append)
    assert res.mode == "cold" and res.actions[0] == "shut down"
    assert res.downtime_ms is not None
    assert [d.name() for d in a.listAllDomains(0)] == []
    moved = b.lookupByUUIDString(uid)
    assert moved.isActive() and moved.isPersistent()
    assert progress[0].phase == "precopy" and progress[-1].phase == "completed"


def test_cold_migration_of_a_stopped_vm_keeps_it_stopped(hosts) -> None:
    a, b = hosts
    dom = define(a, start=False)
    res = cold_migrate(dom, b, copy_storage=False)
    assert res.downtime_ms is None and res.actions[0] == "already stopped"
    assert not b.lookupByName("vm1").isActive()
    res = cold_migrate(b.lookupByName("vm1"), a, copy_storage=False, start=True)
    assert a.lookupByName("vm1").isActive()


def test_cold_migration_cancelled_restarts_the_source(hosts) -> None:
    a, b = hosts
    dom = define(a)
    cancel = threading.Event()

    def on_progress(p) -> None:
        if p.message == "stopping on source":
            cancel.set()  # checked again right after the VM stopped

    with pytest.raises(Cancelled):
        # a disk-free VM: the cancel is noticed before the definition reaches the target
        cold_migrate(dom, b, copy_storage=False, on_progress=on_progress, cancel=cancel)
    assert dom.isActive()
    assert b.listAllDomains(0) == []


def test_cold_migration_preflight_refusals(hosts) -> None:
    a, b = hosts
    dom = define(a, DISK)
    with pytest.raises(FailedPrecondition, match="not visible"):
        cold_migrate(dom, b, copy_storage=False)
    with pytest.raises(FailedPrecondition) as e:
        cold_migrate(dom, b, copy_storage=True)
    assert e.value.field == "dest_pool"
    define(b, start=False, name="vm1")
    with pytest.raises(AlreadyExists):
        cold_migrate(dom, b, copy_storage=False)
    assert dom.isActive()  # nothing was touched
