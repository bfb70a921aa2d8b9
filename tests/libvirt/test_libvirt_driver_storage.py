"""Storage through the libvirt test driver (pools and volumes are in-memory there; it cannot
upload, so import/seed uploads are covered in tests/real), plus the local image/seed helpers."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

import drivers.hypervisor.libvirt.seed as seed_module
from drivers.hypervisor.libvirt import LibvirtConfig, LibvirtConnection, LibvirtHypervisor, test_uri
from drivers.hypervisor.libvirt.images import detect_image_format, virtual_size
from drivers.hypervisor.libvirt.seed import (
    SEED_LABEL,
    SeedIsoBuild,
    build_seed_iso,
    iso_volume_label,
    wait_exit,
)
from drivers.hypervisor.libvirt.xml import StoragePool, StorageVolume
from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.testnode import TestDriverNode
from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from vmmgr.ports import VolumeInfo
from vmmgr.requests import MAX_USER_DATA

pytestmark = pytest.mark.libvirt

GIB = 1 << 30


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[LibvirtConnection]:
    node = TestDriverNode(pools=(StoragePool(name="vmmgr", target_path=str(tmp_path / "pool")),))
    path = node.write(str(tmp_path / "node.xml"))
    c = LibvirtHypervisor(LibvirtConfig()).connect(test_uri(path), host_name="h1")
    yield c
    c.close()


def base_volume(conn: LibvirtConnection, name: str = "base.qcow2") -> VolumeInfo:
    """A volume standing in for an imported image (the test driver cannot upload)."""
    pool = conn.virconn.storagePoolLookupByName("vmmgr")
    xml = StorageVolume(name=name, capacity_bytes=2 * GIB, format="qcow2").build()
    pool.createXML(to_string(xml), 0)
    got = conn.get_volume("vmmgr", name)
    assert got is not None
    return got


def test_ensure_pool_defines_builds_starts_and_autostarts(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    conn.ensure_pool("images", str(tmp_path / "images"))
    pool = conn.virconn.storagePoolLookupByName("images")
    assert pool.isActive() and pool.autostart()
    assert StoragePool.parse_xml(pool.XMLDesc(0)).target_path == str(tmp_path / "images")
    conn.ensure_pool("images", str(tmp_path / "images") + "/")  # idempotent, path normalized
    assert len(conn.virconn.listAllStoragePools(0)) == 2


def test_ensure_pool_starts_an_inactive_pool(conn: LibvirtConnection, tmp_path: Path) -> None:
    conn.virconn.storagePoolLookupByName("vmmgr").destroy()
    conn.ensure_pool("vmmgr", str(tmp_path / "pool"))
    assert conn.virconn.storagePoolLookupByName("vmmgr").isActive()


def test_ensure_pool_refuses_another_path(conn: LibvirtConnection, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="exists at"):
        conn.ensure_pool("vmmgr", str(tmp_path / "elsewhere"))
    with pytest.raises(InvalidArgument) as e:
        conn.ensure_pool("new", "relative/dir")
    assert e.value.field == "path"


def test_overlay_is_qcow2_backed_by_the_base(conn: LibvirtConnection) -> None:
    base = base_volume(conn)
    small = conn.create_overlay("vmmgr", "vm1.qcow2", base, capacity_bytes=1 * GIB)
    assert small.capacity_bytes == 2 * GIB  # never smaller than the base
    big = conn.create_overlay("vmmgr", "vm2.qcow2", base, capacity_bytes=10 * GIB)
    assert (big.capacity_bytes, big.format) == (10 * GIB, "qcow2")
    vol = conn.virconn.storagePoolLookupByName("vmmgr").storageVolLookupByName("vm2.qcow2")
    backing = StorageVolume.parse_xml(vol.XMLDesc(0)).backing_store
    assert backing is not None and (backing.path, backing.format) == (base.path, "qcow2")
    with pytest.raises(AlreadyExists):
        conn.create_overlay("vmmgr", "vm2.qcow2", base, capacity_bytes=GIB)


def test_volume_get_list_delete(conn: LibvirtConnection) -> None:
    base = base_volume(conn)
    conn.create_overlay("vmmgr", "vm1.qcow2", base, capacity_bytes=GIB)
    assert [v.name for v in conn.list_volumes("vmmgr")] == ["base.qcow2", "vm1.qcow2"]
    got = conn.get_volume("vmmgr", "vm1.qcow2")
    assert got is not None and got.pool == "vmmgr" and got.path.endswith("/vm1.qcow2")
    assert conn.has_volume("vmmgr", "vm1.qcow2")
    conn.delete_volume("vmmgr", "vm1.qcow2")
    assert conn.get_volume("vmmgr", "vm1.qcow2") is None
    assert not conn.has_volume("vmmgr", "vm1.qcow2")
    conn.delete_volume("vmmgr", "vm1.qcow2")  # already gone: fine (undo paths)
    assert [v.name for v in conn.list_volumes("vmmgr")] == ["base.qcow2"]


def test_missing_pool_is_not_found(conn: LibvirtConnection) -> None:
    with pytest.raises(NotFound):
        conn.list_volumes("nope")
    with pytest.raises(NotFound):
        conn.get_volume("nope", "x")
    with pytest.raises(NotFound):
        conn.has_volume("nope", "x")
    with pytest.raises(NotFound):
        conn.delete_volume("nope", "x")


def test_bad_volume_names_are_invalid(conn: LibvirtConnection) -> None:
    base = base_volume(conn)
    for name in ("", "../escape", "a/b"):
        with pytest.raises(InvalidArgument) as e:
            conn.create_overlay("vmmgr", name, base, GIB)
        assert e.value.field == "name"


def test_import_on_the_test_driver_stands_in_a_sized_volume(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    """The test driver cannot upload (no virStorageVolUpload); there a volume of the right size
    stands in for the copy so the fast tier can run whole create flows. tests/real checks the
    bytes and the undo on a failed upload."""
    src = tmp_path / "img.qcow2"
    src.write_bytes(qcow2_header(3 * GIB) + b"\0" * 4096)
    vol = conn.import_volume("vmmgr", "img.qcow2", str(src))
    assert (vol.format, vol.capacity_bytes) == ("qcow2", 3 * GIB)
    iso = LibvirtHypervisor().build_seed("instance-id: a\n", "#cloud-config\n", "")
    seed = conn.create_raw_volume("vmmgr", "seed.iso", iso.max_bytes)
    conn.write_volume("vmmgr", "seed.iso", iso.wait())
    iso.discard()
    assert (seed.format, seed.capacity_bytes) == ("raw", iso.max_bytes)
    assert [v.name for v in conn.list_volumes("vmmgr")] == ["img.qcow2", "seed.iso"]


def test_a_raw_volume_and_what_is_written_into_it_are_checked(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument) as e:
        conn.create_raw_volume("vmmgr", "zero.iso", 0)
    assert e.value.field == "capacity_bytes"
    conn.create_raw_volume("vmmgr", "seed.iso", 4096)
    with pytest.raises(AlreadyExists):
        conn.create_raw_volume("vmmgr", "seed.iso", 4096)
    big = tmp_path / "big.iso"
    big.write_bytes(b"x" * 4097)
    with pytest.raises(DriverError, match="does not fit volume 'seed.iso' \\(4096 bytes\\)"):
        conn.write_volume("vmmgr", "seed.iso", str(big))
    with pytest.raises(DriverError, match="missing.iso"):
        conn.write_volume("vmmgr", "seed.iso", str(tmp_path / "missing.iso"))
    with pytest.raises(NotFound):
        conn.write_volume("vmmgr", "nope.iso", str(big))
    assert [v.name for v in conn.list_volumes("vmmgr")] == ["seed.iso"]  # kept for its owner


@pytest.mark.parametrize("tool", ["genisoimage", "xorriso"])
def test_max_bytes_bounds_the_largest_seed(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's volume is made before the ISO exists, from ``max_bytes``: the largest
    documents a request may carry must fit, whichever tool builds them."""
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))
    doc = "\U0001f600" * MAX_USER_DATA  # the limit counts characters: four bytes each here
    build = SeedIsoBuild("instance-id: x\n" * 100, doc, doc)
    try:
        size = os.path.getsize(build.wait())
        assert 2 * 4 * MAX_USER_DATA < size <= build.max_bytes <= size + (1 << 20) + 3 * 2048
    finally:
        build.discard()


def test_import_validates_its_input(conn: LibvirtConnection, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        conn.import_volume("vmmgr", "x.qcow2", str(tmp_path / "missing.qcow2"))
    assert e.value.field == "source_path"
    base_volume(conn, "taken.qcow2")
    src = tmp_path / "x.raw"
    src.write_bytes(b"x")
    with pytest.raises(AlreadyExists):
        conn.import_volume("vmmgr", "taken.qcow2", str(src))


# ---------------------------------------------------------------------- local helpers


def qcow2_header(virtual: int) -> bytes:
    """The first 32 bytes of a qcow2 v3 header: magic, version, backing offset/size, cluster
    bits, size."""
    return b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, virtual)


def test_image_format_and_virtual_size(tmp_path: Path) -> None:
    q = tmp_path / "a.qcow2"
    q.write_bytes(qcow2_header(5 * GIB) + b"\0" * 100)
    r = tmp_path / "a.raw"
    r.write_bytes(b"\1" * 3000)
    assert (detect_image_format(str(q)), virtual_size(str(q))) == ("qcow2", 5 * GIB)
    assert (detect_image_format(str(r)), virtual_size(str(r))) == ("raw", 3000)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_image_facts_agree_with_qemu_img(tmp_path: Path) -> None:
    q = tmp_path / "real.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "3G"], check=True)
    assert (detect_image_format(str(q)), virtual_size(str(q))) == ("qcow2", 3 * GIB)


@pytest.mark.skipif(
    not (shutil.which("genisoimage") or shutil.which("xorriso")), reason="no ISO tool"
)
def test_seed_iso_is_labelled_cidata_and_holds_the_files(tmp_path: Path) -> None:
    iso = build_seed_iso(str(tmp_path), "instance-id: i-1\n", "#cloud-config\n", "version: 2\n")
    assert iso_volume_label(iso) == SEED_LABEL == "cidata"
    data = Path(iso).read_bytes()
    for content in (b"instance-id: i-1", b"#cloud-config", b"version: 2"):
        assert content in data
    if shutil.which("isoinfo"):
        listing = subprocess.run(
            ["isoinfo", "-R", "-f", "-i", iso], capture_output=True, text=True, check=True
        ).stdout.split()
        assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo not installed")
def test_seed_without_network_config_omits_the_file(tmp_path: Path) -> None:
    iso = build_seed_iso(str(tmp_path), "instance-id: i-1\n", "#cloud-config\n")
    listing = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", iso], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(listing) == ["/meta-data", "/user-data"]


def fake_iso_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A ``genisoimage`` running ``script``, alone on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "genisoimage"
    tool.write_text(script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    return tool


def test_seed_without_an_iso_tool_is_a_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(FailedPrecondition, match="genisoimage"):
        build_seed_iso(str(tmp_path), "a", "b")


def test_seed_tool_failure_is_a_driver_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_iso_tool(tmp_path, monkeypatch, "#!/bin/sh\necho 'disk full' >&2\nexit 3\n")
    with pytest.raises(DriverError, match="disk full"):
        build_seed_iso(str(tmp_path), "a", "b")


def test_a_seed_build_discarded_midway_is_stopped_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_iso_tool(tmp_path, monkeypatch, "#!/bin/sh\nexec /bin/sleep 30\n")
    build = SeedIsoBuild("a", "b")
    workdir = Path(build.path).parent
    assert (workdir / "meta-data").read_text() == "a"
    assert build._proc.poll() is None  # still running
    build.discard()
    assert not workdir.exists() and build._proc.returncode is not None
    build.discard()  # twice is fine


def test_a_seed_build_discarded_from_two_threads_at_once_is_removed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create releases the seed to a worker after its upload, and its operation's end
    discards it again: the two may meet."""
    fake_iso_tool(tmp_path, monkeypatch, "#!/bin/sh\nexec /bin/sleep 30\n")
    build = SeedIsoBuild("a", "b")
    workdir = Path(build.path).parent
    start, errors = threading.Barrier(2), []

    def discard() -> None:
        start.wait(5)
        try:
            build.discard()
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=discard) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and not workdir.exists() and build._proc.returncode is not None


def test_seed_without_an_iso_tool_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(seed_module, "scratch_root", lambda: str(tmp_path))
    with pytest.raises(FailedPrecondition):
        SeedIsoBuild("a", "b")
    assert not list(tmp_path.glob("vmmgr-seed-*"))


def test_an_iso_tool_removed_after_it_was_found_is_a_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = fake_iso_tool(tmp_path, monkeypatch, "#!/bin/sh\nexit 0\n")
    monkeypatch.setattr(seed_module, "scratch_root", lambda: str(tmp_path))
    SeedIsoBuild("a", "b").discard()  # found (and remembered)
    tool.unlink()
    with pytest.raises(FailedPrecondition, match="gone"):
        SeedIsoBuild("a", "b")
    assert not list(tmp_path.glob("vmmgr-seed-*"))
    with pytest.raises(FailedPrecondition, match="no ISO tool"):  # looked up afresh
        SeedIsoBuild("a", "b")


def test_a_seed_tool_that_hangs_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_iso_tool(tmp_path, monkeypatch, "#!/bin/sh\nexec /bin/sleep 30\n")
    monkeypatch.setattr(seed_module, "_TIMEOUT_S", 0.2)
    build = SeedIsoBuild("a", "b")
    with pytest.raises(DriverError, match="timed out after 0.2s"):
        build.wait()
    assert build._proc.returncode is not None  # killed and reaped
    build.discard()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_wait_exit_returns_the_code_at_once_or_times_out(
    pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pidfd path (Linux >= 5.3) and Popen.wait's own, where pidfd_open is missing."""
    if not pidfd:
        monkeypatch.delattr(seed_module.os, "pidfd_open")
    assert wait_exit(subprocess.Popen(["sh", "-c", "exit 7"]), 10) == 7
    slow = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(slow, 0.05)
        assert slow.poll() is None  # a timeout leaves the child to the caller
    finally:
        slow.kill()
        slow.wait()
    reaped = subprocess.Popen(["true"])
    reaped.wait()
    assert wait_exit(reaped, 1) == 0  # already reaped: no pidfd to open, the code is known


def test_iso_label_rejects_non_iso(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"\0" * 40000)
    with pytest.raises(ValueError):
        iso_volume_label(str(f))


# ---------------------------------------------------------------------- create path shortcuts


def test_a_taken_volume_name_is_already_exists_and_the_volume_is_kept(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    """No look-up before createXML: libvirt's own refusal (the test driver says only
    OPERATION_FAILED) becomes AlreadyExists, and the volume that was there stays as it was."""
    base = base_volume(conn)
    src = tmp_path / "x.raw"
    src.write_bytes(b"x" * 10)
    for create in (
        lambda: conn.create_overlay("vmmgr", "base.qcow2", base, 5 * GIB),
        lambda: conn.import_volume("vmmgr", "base.qcow2", str(src)),
    ):
        with pytest.raises(AlreadyExists, match="'base.qcow2' already exists in pool 'vmmgr'"):
            create()
    assert conn.get_volume("vmmgr", "base.qcow2") == base


def test_overlay_and_raw_import_are_described_without_reading_back(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    base = base_volume(conn)
    overlay = conn.create_overlay("vmmgr", "vm1.qcow2", base, 3 * GIB)
    got = conn.get_volume("vmmgr", "vm1.qcow2")
    assert got is not None
    assert (overlay.pool, overlay.name, overlay.path, overlay.format, overlay.capacity_bytes) == (
        got.pool,
        got.name,
        got.path,
        got.format,
        got.capacity_bytes,
    )
    src = tmp_path / "seed.iso"
    src.write_bytes(b"\1" * 5000)
    seed = conn.import_volume("vmmgr", "seed.iso", str(src))
    got = conn.get_volume("vmmgr", "seed.iso")
    assert got is not None
    assert (seed.path, seed.format, seed.capacity_bytes) == (got.path, "raw", 5000)


def test_an_unreadable_source_fails_before_a_volume_is_made(conn: LibvirtConnection) -> None:
    """/proc/self/mem is a regular file whose first read fails (EIO at address 0)."""
    with pytest.raises(DriverError, match="Input/output error"):
        conn.import_volume("vmmgr", "broken.raw", "/proc/self/mem")
    assert conn.list_volumes("vmmgr") == []


def test_pool_handles_survive_the_pool_being_replaced(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    base = base_volume(conn)
    conn.create_overlay("vmmgr", "vm1.qcow2", base, GIB)  # the pool handle is cached now
    raw = conn.virconn.storagePoolLookupByName("vmmgr")
    for vol in raw.listAllVolumes(0):
        vol.delete(0)
    raw.destroy()
    raw.undefine()
    with pytest.raises(NotFound):
        conn.list_volumes("vmmgr")
    conn.ensure_pool("vmmgr", str(tmp_path / "pool"))  # defined again: a new pool uuid
    base = base_volume(conn)
    assert conn.create_overlay("vmmgr", "vm1.qcow2", base, GIB).name == "vm1.qcow2"
    assert [v.name for v in conn.list_volumes("vmmgr")] == ["base.qcow2", "vm1.qcow2"]


def test_a_stale_pool_handle_is_dropped_and_looked_up_again(
    conn: LibvirtConnection, tmp_path: Path
) -> None:
    """What qemu's storage driver answers for a handle whose pool was replaced (it resolves
    handles by uuid; the test driver by name): VIR_ERR_NO_STORAGE_POOL. A handle of another
    private test host whose pool is gone answers the same; tests/real has the qemu case."""
    base = base_volume(conn)
    other = libvirt.open(test_uri(str(tmp_path / "node.xml")))
    try:
        stale = other.storagePoolLookupByName("vmmgr")
        stale.destroy()
        stale.undefine()
        conn._pools["vmmgr"] = stale
        assert conn.get_volume("vmmgr", "base.qcow2") == base
        assert conn._pools["vmmgr"] is not stale
    finally:
        other.close()
