"""The libvirt driver against the real libvirtd (qemu:///system) and qemu.

Skipped when libvirtd does not answer, unless CI is set (then it fails). Start it with
scripts/libvirtd-up.sh. Every test uses its own pool directory and names, and cleans up.
The guest image: $VMMGR_TINY_IMAGE, else images/build/tiny.qcow2, else a blank qcow2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import libvirt
import pytest

from drivers.hypervisor.libvirt import LibvirtConfig, LibvirtConnection, LibvirtHypervisor
from drivers.hypervisor.libvirt.images import detect_image_format, virtual_size
from drivers.hypervisor.libvirt.seed import iso_volume_label
from drivers.hypervisor.libvirt.xml import (
    Domain,
    Memory,
    StoragePool,
    Vcpu,
    domain_xml_from_spec,
)
from drivers.hypervisor.libvirt.xml.base import to_string
from vmmgr.errors import AlreadyExists, DriverError, FailedPrecondition
from vmmgr.ports import (
    DirectBootSpec,
    DiskSpec,
    DomainEvent,
    DomainSpec,
    DomainState,
    MdevHostdevSpec,
    NicSpec,
    PciHostdevSpec,
)

pytestmark = [pytest.mark.real, pytest.mark.timeout(60)]

URI = "qemu:///system"
ROOT = Path(__file__).resolve().parents[2]
POOL_ROOT = "/var/lib/libvirt/images"  # qemu runs as libvirt-qemu: a tmp dir is not reachable


def _reachable() -> str:
    try:
        libvirt.open(URI).close()
        return ""
    except libvirt.libvirtError as e:
        return str(e)


@pytest.fixture(scope="module")
def hv() -> LibvirtHypervisor:
    problem = _reachable()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"libvirtd not reachable at {URI}: {problem}")
        pytest.skip(f"libvirtd not reachable at {URI} (scripts/libvirtd-up.sh): {problem}")
    return LibvirtHypervisor(LibvirtConfig(keepalive_interval_s=1, keepalive_count=3))


@pytest.fixture
def conn(hv: LibvirtHypervisor) -> Iterator[LibvirtConnection]:
    c = hv.connect(URI, host_name="local")
    yield c
    c.close()


@dataclass
class Pool:
    name: str
    path: str


@pytest.fixture
def pool(conn: LibvirtConnection) -> Iterator[Pool]:
    name = f"vmmgr-test-{uuid.uuid4().hex[:8]}"
    p = Pool(name, os.path.join(POOL_ROOT, name))
    conn.ensure_pool(p.name, p.path)
    yield p
    raw = libvirt.open(URI)
    try:
        lv = raw.storagePoolLookupByName(p.name)
        for vol in lv.listAllVolumes(0):
            vol.delete(0)
        lv.destroy()
        lv.undefine()
    finally:
        raw.close()
    shutil.rmtree(p.path, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> str:
    for candidate in (os.environ.get("VMMGR_TINY_IMAGE"), str(ROOT / "images/build/tiny.qcow2")):
        if candidate and os.path.isfile(candidate):
            return candidate
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "32M"], check=True)
    return str(blank)


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=30
    )


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_tcg_domain_on_overlay_and_seed_runs_and_is_cleaned_up(
    conn: LibvirtConnection, pool: Pool, image: str
) -> None:
    events: list[DomainEvent] = []
    conn.on_domain_event(events.append)

    def mine_so_far() -> list[tuple[str, str]]:
        return [(e.reason, e.detail) for e in events if e.uuid == spec.vm_id]

    base = conn.import_volume(pool.name, "base.qcow2", image)
    assert base.path == os.path.join(pool.path, "base.qcow2")
    assert (base.format, base.capacity_bytes) == (detect_image_format(image), virtual_size(image))
    assert sha256(base.path) == sha256(image)  # byte-exact upload over the stream

    overlay = conn.create_overlay(pool.name, "vm.qcow2", base, base.capacity_bytes + (64 << 20))
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", overlay.path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["backing-filename"] == base.path
    assert info["virtual-size"] == base.capacity_bytes + (64 << 20)

    iso = LibvirtHypervisor().build_seed("instance-id: real-1\n", "#cloud-config\n", "version: 2\n")
    seed = conn.create_raw_volume(pool.name, "seed.iso", iso.max_bytes)  # before it is built
    conn.write_volume(pool.name, "seed.iso", iso.wait())
    with open(iso.wait(), "rb") as f:
        built = f.read()
    iso.discard()
    assert not os.path.exists(iso.wait())  # the upload was a copy: the local ISO is gone
    with open(seed.path, "rb") as f:
        assert f.read(len(built)) == built  # byte-exact over the stream, the rest zeros
    assert os.path.getsize(seed.path) == iso.max_bytes
    assert seed.format == "raw" and iso_volume_label(seed.path) == "cidata"

    name = f"vmmgr-test-{uuid.uuid4().hex[:8]}"
    spec = DomainSpec(
        vm_id=str(uuid.uuid4()),
        name=name,
        vcpus=1,
        memory_mib=128,
        owner="real-test",
        domain_type="qemu",
        disks=(
            DiskSpec(path=overlay.path, target="vda"),
            DiskSpec(path=seed.path, target="sda", bus="sata", device="cdrom", format="raw"),
        ),
        nics=(NicSpec(network=""),),
        watchdog="reset",
    )
    try:
        assert conn.define(spec).state is DomainState.STOPPED
        conn.start(spec.vm_id)
        assert name in virsh("list", "--name").stdout.split()
        assert overlay.path in virsh("dumpxml", name).stdout
        got = conn.get_domain(spec.vm_id)
        assert got is not None and got.state is DomainState.RUNNING and got.vm_id == spec.vm_id
        # someone else pausing it is reported (over the socket, asynchronously)
        virsh("suspend", name)
        deadline = time.monotonic() + 10
        while ("suspended", "paused") not in mine_so_far() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("suspended", "paused") in mine_so_far()
        virsh("resume", name)

        stopped = conn.shutdown(spec.vm_id, timeout_s=3.0)  # the tiny guest may ignore ACPI
        if not stopped:
            conn.destroy(spec.vm_id)
        assert conn.get_domain(spec.vm_id).state is DomainState.STOPPED  # type: ignore[union-attr]
        assert name not in virsh("list", "--name").stdout.split()
        conn.undefine(spec.vm_id)
        assert conn.get_domain(spec.vm_id) is None
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)

    for vol in ("vm.qcow2", "seed.iso", "base.qcow2"):
        conn.delete_volume(pool.name, vol)
    assert conn.list_volumes(pool.name) == []
    assert sorted(os.listdir(pool.path)) == []

    assert conn.drain_events()
    # the events of our own define, start and undefine are not reported; a destroy's are, its
    # STOPPED last (qemu tells of the kill as a finished shutdown first)
    ours = {("defined", "added"), ("started", "booted"), ("undefined", "removed")}
    assert ours.isdisjoint(mine_so_far()), mine_so_far()
    assert mine_so_far()[-1] == ("stopped", "shutdown" if stopped else "destroyed")


def test_failed_upload_removes_the_half_made_volume(conn: LibvirtConnection, pool: Pool) -> None:
    """/proc/self/mem is a regular file whose first read fails (EIO at address 0)."""
    with pytest.raises(DriverError, match="Input/output error"):
        conn.import_volume(pool.name, "broken.raw", "/proc/self/mem")
    assert conn.list_volumes(pool.name) == []
    assert os.listdir(pool.path) == []


def _forms(host_has_numa: bool) -> dict[str, DomainSpec]:
    base = DomainSpec(
        vm_id="",
        name="",
        vcpus=1,
        memory_mib=64,
        disks=(DiskSpec(path="/var/lib/libvirt/images/none.qcow2", target="vda"),),
    )
    cdrom = DiskSpec("/var/lib/libvirt/images/none.iso", "sda", "sata", "cdrom", "raw")
    forms = {
        "pci_hostdev": replace(base, pci_hostdevs=(PciHostdevSpec("0000:3b:00.0"),)),
        "mdev_hostdev": replace(
            base, mdev_hostdevs=(MdevHostdevSpec("c2177883-f1bb-47f0-914d-32a22e3a8804"),)
        ),
        "full_tcg": replace(
            base,
            domain_type="qemu",
            disks=(*base.disks, cdrom),
            nics=(NicSpec(""),),
            watchdog="poweroff",
            description="a <desc> & more",
        ),
        "direct_boot": replace(
            base,
            domain_type="qemu",
            disks=(),
            direct_boot=DirectBootSpec("/boot/vmlinuz", "/boot/initrd.img", "console=ttyS0"),
        ),
    }
    if host_has_numa:
        forms["numatune"] = replace(base, numa_node=0)
    return forms


@pytest.mark.parametrize(
    "form", ["pci_hostdev", "mdev_hostdev", "full_tcg", "direct_boot", "numatune"]
)
def test_virsh_define_accepts_every_xml_form(
    conn: LibvirtConnection, form: str, tmp_path: Path
) -> None:
    """libvirt's define validates the XML (not the devices: lab-notes)."""
    caps = conn.capabilities()
    forms = _forms(bool(caps.cells))
    if form not in forms:
        pytest.skip("host reports no NUMA cell")
    name = f"vmmgr-form-{form}-{uuid.uuid4().hex[:6]}"
    spec = replace(forms[form], vm_id=str(uuid.uuid4()), name=name)
    path = tmp_path / "domain.xml"
    path.write_text(domain_xml_from_spec(spec, caps))
    try:
        done = virsh("define", str(path), check=False)
        assert done.returncode == 0, done.stderr
        dumped = virsh("dumpxml", name).stdout
        assert spec.vm_id in dumped and "vmmgr:instance" in dumped
        virsh("undefine", name)
        info = conn.define(spec)  # the same through the driver
        assert info.vm_id == spec.vm_id
        conn.undefine(spec.vm_id)
        assert conn.get_domain(spec.vm_id) is None
    finally:
        virsh("undefine", name, check=False)


def test_foreign_domain_on_a_real_host_is_left_alone(conn: LibvirtConnection) -> None:
    foreign_id = str(uuid.uuid4())
    name = f"vmmgr-foreign-{foreign_id[:8]}"
    xml = to_string(Domain("qemu", name, foreign_id, Memory(65536), Vcpu(1)).build())
    conn.virconn.defineXML(xml)
    try:
        listed = {d.uuid: d for d in conn.list_domains()}
        assert listed[foreign_id].vm_id is None
        for op in (conn.start, conn.undefine, conn.destroy):
            with pytest.raises(FailedPrecondition):
                op(foreign_id)
        assert name in virsh("list", "--all", "--name").stdout.split()
    finally:
        virsh("undefine", name, check=False)


@pytest.mark.skipif(shutil.which("virt-admin") is None, reason="virt-admin not installed")
def test_server_side_disconnect_fires_close_and_next_call_reconnects(
    conn: LibvirtConnection,
) -> None:
    closed = threading.Event()
    reasons: list[str] = []

    def on_close(reason: str) -> None:
        reasons.append(reason)
        closed.set()

    conn.on_close(on_close)
    conn.list_domains()
    ours = _our_client_ids()
    assert ours, "our libvirt client is not listed by virt-admin"
    for cid in ours:
        subprocess.run(
            ["virt-admin", "client-disconnect", "libvirtd", cid], check=True, capture_output=True
        )
    assert closed.wait(10)
    assert reasons == ["eof"] and not conn.alive()
    conn.list_domains()  # reconnects
    assert conn.alive()


def _our_client_ids() -> list[str]:
    out = subprocess.run(
        ["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True, check=True
    ).stdout
    ids = []
    for line in out.splitlines()[2:]:
        if not line.strip():
            continue
        cid = line.split()[0]
        info = subprocess.run(
            ["virt-admin", "client-info", "libvirtd", cid], capture_output=True, text=True
        ).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in info.splitlines())
        )
        if fields.get("unix_process_id") == str(os.getpid()):
            ids.append(cid)
    return ids


def test_kvm_domain_starts_with_the_cpu_auto_chooses_for_this_host(
    conn: LibvirtConnection,
) -> None:
    """lab-notes: kvm here needs the qemu64/-svm form; AUTO must pick what actually starts."""
    if "kvm" not in conn.host_info().domain_types:
        pytest.skip("host offers no kvm")
    spec = DomainSpec(
        vm_id=str(uuid.uuid4()),
        name=f"vmmgr-kvm-{uuid.uuid4().hex[:8]}",
        vcpus=1,
        memory_mib=64,
        domain_type="kvm",
        heartbeat_channel=False,
    )
    try:
        conn.define(spec)
        conn.start(spec.vm_id)
        assert conn.get_domain(spec.vm_id).state is DomainState.RUNNING  # type: ignore[union-attr]
        conn.destroy(spec.vm_id)
        conn.undefine(spec.vm_id)
    finally:
        virsh("destroy", spec.name, check=False)
        virsh("undefine", spec.name, check=False)


# ---------------------------------------------------------------------- create path shortcuts


def test_taken_volume_names_are_already_exists_on_a_real_pool(
    conn: LibvirtConnection, pool: Pool, image: str
) -> None:
    """qemu's storage driver refuses a taken name with VIR_ERR_STORAGE_VOL_EXIST."""
    base = conn.import_volume(pool.name, "base.qcow2", image)
    overlay = conn.create_overlay(pool.name, "vm.qcow2", base, base.capacity_bytes)
    with pytest.raises(AlreadyExists, match="already exists in pool"):
        conn.create_overlay(pool.name, "vm.qcow2", base, base.capacity_bytes)
    with pytest.raises(AlreadyExists, match="already exists in pool"):
        conn.import_volume(pool.name, "base.qcow2", image)
    assert sha256(base.path) == sha256(image)  # untouched
    got = conn.get_volume(pool.name, "vm.qcow2")
    assert got is not None and (got.path, got.format) == (overlay.path, "qcow2")


def test_a_replaced_pool_is_found_again_on_a_real_host(
    conn: LibvirtConnection, pool: Pool, image: str
) -> None:
    """qemu resolves a pool handle by uuid: after undefine + define the cached one answers
    VIR_ERR_NO_STORAGE_POOL, is dropped and looked up again."""
    base = conn.import_volume(pool.name, "base.qcow2", image)  # the handle is cached now
    raw = libvirt.open(URI)
    try:
        lv = raw.storagePoolLookupByName(pool.name)
        old_uuid = lv.UUIDString()
        lv.destroy()
        lv.undefine()
        xml = to_string(StoragePool(name=pool.name, target_path=pool.path).build())
        again = raw.storagePoolDefineXML(xml, 0)  # the same pool, a new uuid
        again.create(0)
        assert again.UUIDString() != old_uuid
    finally:
        raw.close()
    assert conn.get_volume(pool.name, "base.qcow2") == base
    assert conn.create_overlay(pool.name, "vm.qcow2", base, base.capacity_bytes).name == "vm.qcow2"


def test_start_of_a_running_domain_and_a_foreign_twin_on_a_real_host(
    conn: LibvirtConnection,
) -> None:
    """qemu refuses a second start with OPERATION_INVALID (FailedPrecondition here), and
    define never overwrites a foreign domain with the same uuid and name."""
    spec = DomainSpec(
        vm_id=str(uuid.uuid4()),
        name=f"vmmgr-test-{uuid.uuid4().hex[:8]}",
        vcpus=1,
        memory_mib=64,
        domain_type="qemu",
        heartbeat_channel=False,
    )
    foreign_id = str(uuid.uuid4())
    foreign = f"vmmgr-foreign-{foreign_id[:8]}"
    plain = Domain("qemu", foreign, foreign_id, Memory(65536), Vcpu(1))
    conn.virconn.defineXML(to_string(plain.build()))
    try:
        conn.define(spec)
        conn.start(spec.vm_id)
        with pytest.raises(FailedPrecondition, match="already running"):
            conn.start(spec.vm_id)
        with pytest.raises(FailedPrecondition, match="foreign"):
            conn.define(replace(spec, vm_id=foreign_id, name=foreign))
        assert "vmmgr:instance" not in virsh("dumpxml", foreign).stdout
        conn.destroy(spec.vm_id)
        conn.undefine(spec.vm_id)
    finally:
        for name in (spec.name, foreign):
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
