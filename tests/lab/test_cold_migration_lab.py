"""Cold migration between lab hosts: stop, copy volumes over libvirt streams, start, clean up."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import uuid

import libvirt
import pytest

from drivers.hypervisor.libvirt.migration import cold_migrate
from drivers.lab import Lab
from drivers.lab.guest import TinyGuest, domain_xml
from vmmgr.errors import AlreadyExists, Cancelled, FailedPrecondition, VmmgrError

pytestmark = pytest.mark.lab


def _vols(conns, host: int, pool: str = "local") -> list[str]:
    p = conns[host].storagePoolLookupByName(pool)
    p.refresh(0)
    return p.listVolumes()


def test_cold_migration_moves_the_disk_and_restarts_on_the_target(lab: Lab, conns, guests) -> None:
    g = guests(host=0, pool="local", acpi_poweroff=True)
    hb = g.heartbeat(conns, 0)
    hb.wait_for(2, timeout_s=120)  # acpid is up: the power button now powers off
    hb.stop()
    progress = []
    res = cold_migrate(
        g.dom(conns, 0),
        conns[1],
        dest_pool="local",
        shutdown_timeout_s=30,
        on_progress=progress.append,
    )
    assert res.mode == "cold" and res.actions[0] == "shut down"
    assert res.downtime_ms is not None and res.downtime_ms > 0
    assert res.data_transferred > 0
    assert g.name not in conns.names(0)
    assert f"{g.name}.qcow2" not in _vols(conns, 0)
    assert f"{g.name}.qcow2" in _vols(conns, 1)
    assert g.running_on(conns, 1)
    assert g.dom(conns, 1).isPersistent()
    assert progress[-1].phase == "completed"
    assert any(p.message.startswith("copying vda") for p in progress)
    hb = g.heartbeat(conns, 1)  # a fresh boot on the target, from the copied disk
    try:
        hb.wait_for(1, timeout_s=120)
        assert hb.ids == {g.name}
    finally:
        hb.stop()


def test_cold_migration_cancelled_midcopy_restores_the_source(lab: Lab, conns, guests) -> None:
    g = guests(host=0, pool="local")  # the image ignores the power button: forced off
    cancel = threading.Event()

    def on_progress(p) -> None:
        if p.message.startswith("copying"):
            cancel.set()

    with pytest.raises(Cancelled):
        cold_migrate(
            g.dom(conns, 0),
            conns[1],
            dest_pool="local",
            shutdown_timeout_s=0.5,
            on_progress=on_progress,
            cancel=cancel,
        )
    assert g.running_on(conns, 0)  # restarted by the undo
    assert f"{g.name}.qcow2" in _vols(conns, 0)
    assert g.name not in conns.names(1)
    assert f"{g.name}.qcow2" not in _vols(conns, 1)


def test_cold_migration_with_shared_storage_moves_only_the_definition(
    lab: Lab, conns, guests
) -> None:
    g = guests(host=0, pool="shared")
    res = cold_migrate(g.dom(conns, 0), conns[1], copy_storage=False, shutdown_timeout_s=0.2)
    assert res.actions[0] in ("forced off", "shut down")
    assert res.data_transferred == 0
    assert g.running_on(conns, 1) and g.name not in conns.names(0)
    assert f"{g.name}.qcow2" in _vols(conns, 1, "shared")  # the same file, still there
    disk = g.dom(conns, 1).XMLDesc(0)
    assert f"{lab.shared_dir}/{g.name}.qcow2" in disk


def test_cold_migration_refuses_a_disk_whose_backing_file_the_target_lacks(lab: Lab, conns) -> None:
    """Preflight failure: nothing is stopped, nothing is created on the target."""
    pool0 = conns[0].storagePoolLookupByName("local")
    base = pool0.createXML(
        "<volume><name>only-here.qcow2</name><capacity>1048576</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    top = pool0.createXML(
        "<volume><name>top.qcow2</name><capacity>1048576</capacity>"
        "<target><format type='qcow2'/></target><backingStore>"
        f"<path>{base.path()}</path><format type='qcow2'/></backingStore></volume>",
        0,
    )
    xml = (
        "<domain type='qemu'><name>cold-pre</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{top.path()}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    dom = conns[0].defineXML(xml)
    try:
        with pytest.raises(FailedPrecondition, match="backing image .* not on the destination"):
            cold_migrate(dom, conns[1], dest_pool="local")
        assert "cold-pre" in conns.names(0) and "cold-pre" not in conns.names(1)
        assert "top.qcow2" not in _vols(conns, 1)
        with pytest.raises(FailedPrecondition, match="not visible"):
            cold_migrate(dom, conns[1], copy_storage=False)
        # a domain of that name on the target is refused too
        dom1 = conns[1].defineXML(xml.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"))
        try:
            with pytest.raises(AlreadyExists):
                cold_migrate(dom, conns[1], dest_pool="local")
        finally:
            dom1.undefine()
    finally:
        dom.undefine()
        top.delete(0)
        base.delete(0)


def test_cold_migration_undoes_when_the_target_cannot_start_the_vm(
    lab: Lab, conns, tiny_image
) -> None:
    """The kernel sits in host 0's own /var/lib/libvirt/images: the definition is accepted on
    host 1, the start there fails, and the undo puts everything back on host 0."""
    name = f"t-undo-{uuid.uuid4().hex[:6]}"
    kernel = f"/var/lib/libvirt/images/{name}-vmlinuz"
    shutil.copyfile(tiny_image.kernel, lab.hosts[0].path_in_host(kernel))
    spec = TinyGuest(name, str(uuid.uuid4()), kernel, tiny_image.initrd)
    dom = conns[0].defineXML(domain_xml(spec))
    dom.create()
    try:
        progress = []
        with pytest.raises(VmmgrError, match="kernel") as e:
            cold_migrate(
                dom,
                conns[1],
                copy_storage=False,
                shutdown_timeout_s=0.2,
                on_progress=progress.append,
            )
        assert "undo_failed" not in e.value.details
        assert progress[-1].phase == "failed"
        assert dom.isActive() and dom.isPersistent()  # restarted on the source
        assert name not in conns.names(1)  # undefined on the target
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        dom.undefine()
        os.unlink(lab.hosts[0].path_in_host(kernel))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_cold_migration_copies_a_stopped_vm_disk_byte_for_byte(lab: Lab, conns) -> None:
    """A qcow2 with data and holes arrives identical (sparse stream), format re-detected."""
    name = f"t-copy-{uuid.uuid4().hex[:6]}"
    pool0 = conns[0].storagePoolLookupByName("local")
    vol = pool0.createXML(
        f"<volume><name>{name}.qcow2</name><capacity>67108864</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    vol_path = vol.path()  # the same in-namespace path on both hosts
    src_file = lab.hosts[0].path_in_host(vol_path)
    subprocess.run(  # data at 1 MiB and 40 MiB, holes elsewhere
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 512k", "-c", "write -P 0x5a 40M 64k",
         src_file],
        check=True,
        capture_output=True,
    )  # fmt: skip
    want = _sha256(src_file)
    xml = (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{vol_path}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    dom = conns[0].defineXML(xml)
    try:
        res = cold_migrate(dom, conns[1], dest_pool="local")
        assert res.downtime_ms is None and res.actions[0] == "already stopped"
        dst_file = lab.hosts[1].path_in_host(vol_path)
        assert _sha256(dst_file) == want
        assert res.data_transferred < os.path.getsize(dst_file)  # holes were not sent as data
        moved = conns[1].storagePoolLookupByName("local").storageVolLookupByName(f"{name}.qcow2")
        assert "<format type='qcow2'/>" in moved.XMLDesc(0)
        assert not os.path.exists(src_file)  # the source copy is gone
        assert not conns[1].lookupByName(name).isActive()  # it was stopped: it stays stopped
    finally:
        for i in (0, 1):
            with contextlib.suppress(libvirt.libvirtError):
                conns[i].lookupByName(name).undefine()
            with contextlib.suppress(libvirt.libvirtError):
                p = conns[i].storagePoolLookupByName("local")
                p.refresh(0)
                p.storageVolLookupByName(f"{name}.qcow2").delete(0)
