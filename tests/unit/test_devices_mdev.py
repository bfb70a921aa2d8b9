"""vGPU lifecycle over a fake sysfs tree (the kernel's create/remove emulated in tests/)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from drivers.devices.mdev import MdevManager, SysfsMdevBackend
from drivers.devices.sysfs import Sysfs
from tests.fixtures.sysfs import EXISTING_MDEV, FakeSysfs, gpu_host_sysfs
from vmmgr.devices.mdev import DeclaredMdev, reconcile_mdevs
from vmmgr.devices.model import MdevInstance
from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from vmmgr.undo import UndoStack

A100 = "0000:5e:00.0"
UUID = "0b5d5bd2-2a9b-4fdf-9b3c-2c0a6a1e0f00"


@pytest.fixture
def fs(tmp_path: Path) -> FakeSysfs:
    return gpu_host_sysfs(tmp_path)


@pytest.fixture
def mgr(fs: FakeSysfs) -> MdevManager:
    return MdevManager(SysfsMdevBackend(fs.root, write=fs.write))


def test_sysfs_reader_sees_the_tree(fs: FakeSysfs) -> None:
    s = Sysfs(fs.root)
    f = s.pci_facts("5e:00.0")
    assert f is not None
    assert (f.driver, f.numa_node, f.iommu_group) == ("nvidia", 0, 40)
    assert dict(f.mdev_max_instances) == {"nvidia-700": 20, "nvidia-701": 10, "nvidia-702": 4}
    pf = s.pci_facts("0000:b1:00.0")
    assert (
        pf is not None and pf.virtfns == ("0000:b1:00.1", "0000:b1:00.2") and pf.sriov_totalvfs == 2
    )
    vf = s.pci_facts("0000:b1:00.2")
    assert vf is not None and vf.physfn == "0000:b1:00.0"
    l4 = s.pci_facts("0000:86:00.0")
    assert l4 is not None and l4.iommu_group_members == ("0000:86:00.0", "0000:87:00.0")
    assert s.mdevs() == [MdevInstance(EXISTING_MDEV, "nvidia-700", A100, 101)]
    assert s.pci_facts("0000:ee:00.0") is None
    assert Sysfs(fs.root / "nowhere").all_pci_facts() == {} and Sysfs(fs.root / "x").mdevs() == []


def test_create_and_remove_through_sysfs(fs: FakeSysfs, mgr: MdevManager) -> None:
    rec = mgr.create(A100, "nvidia-700", UUID, parent_driver="nvidia")
    assert (rec.uuid, rec.parent, rec.type_id, rec.via, rec.parent_driver) == (
        UUID,
        A100,
        "nvidia-700",
        "sysfs",
        "nvidia",
    )
    assert not rec.persistent
    assert fs.available(A100, "nvidia-700") == 18
    assert UUID in {m.uuid for m in Sysfs(fs.root).mdevs()}
    assert fs.writes[-1][0].endswith("mdev_supported_types/nvidia-700/create")
    mgr.remove(UUID)
    assert fs.available(A100, "nvidia-700") == 19
    assert UUID not in {m.uuid for m in Sysfs(fs.root).mdevs()}
    assert fs.writes[-1] == (str(fs.root / "sys/bus/mdev/devices" / UUID / "remove"), "1")


def test_generated_uuid(mgr: MdevManager) -> None:
    rec = mgr.create("5e:00.0", "nvidia-700")
    assert len(rec.uuid) == 36 and rec.parent == A100


def test_create_failures(fs: FakeSysfs, mgr: MdevManager) -> None:
    with pytest.raises(ResourceExhausted, match="nvidia-701"):
        mgr.create(A100, "nvidia-701", UUID)  # available_instances 0
    with pytest.raises(FailedPrecondition, match="nvidia-999"):
        mgr.create(A100, "nvidia-999", UUID)
    with pytest.raises(FailedPrecondition, match="not an mdev parent"):
        mgr.create("0000:3b:00.0", "nvidia-700", UUID)
    with pytest.raises(AlreadyExists):
        mgr.create(A100, "nvidia-700", EXISTING_MDEV)
    with pytest.raises(InvalidArgument) as bad:
        mgr.create(A100, "nvidia-700", "not-a-uuid")
    assert bad.value.field == "uuid"
    fs.fail_writes["create"] = errno.EIO
    with pytest.raises(DriverError, match="Input/output error"):
        mgr.create(A100, "nvidia-700", UUID)
    assert fs.available(A100, "nvidia-700") == 19  # nothing happened


def test_remove_failures(fs: FakeSysfs, mgr: MdevManager) -> None:
    with pytest.raises(NotFound):
        mgr.remove(UUID)
    fs.fail_writes["remove"] = errno.EBUSY
    with pytest.raises(DriverError, match="busy"):
        mgr.remove(EXISTING_MDEV)
    assert EXISTING_MDEV in {m.uuid for m in Sysfs(fs.root).mdevs()}


def test_kernel_refusal_without_a_trace_is_a_driver_error(fs: FakeSysfs) -> None:
    def write_nothing(path: Path, value: str) -> None:
        path.write_text(value)  # a kernel that accepts the write but creates nothing

    backend = SysfsMdevBackend(fs.root, write=write_nothing)
    with pytest.raises(DriverError, match="did not appear"):
        backend.create(A100, "nvidia-700", UUID)


def test_create_define_start_undoes_as_a_whole(fs: FakeSysfs, mgr: MdevManager) -> None:
    steps: list[str] = []
    with pytest.raises(RuntimeError, match="start failed"), UndoStack("create vm-1") as undo:
        rec = mgr.create(A100, "nvidia-700", UUID, undo=undo)
        steps.append(f"define with {rec.uuid}")
        undo.push(lambda: steps.append("undefine"), "undefine domain")
        raise RuntimeError("start failed")
    assert steps == [f"define with {UUID}", "undefine"]
    assert UUID not in {m.uuid for m in Sysfs(fs.root).mdevs()}
    assert fs.available(A100, "nvidia-700") == 19
    with UndoStack() as ok:
        mgr.create(A100, "nvidia-700", UUID, undo=ok)
    assert UUID in {m.uuid for m in Sysfs(fs.root).mdevs()}  # success keeps it


def test_reconcile_after_reboot_and_recreate(fs: FakeSysfs, mgr: MdevManager) -> None:
    lost = DeclaredMdev(UUID, A100, "nvidia-700", vm_id="vm-1")
    transient = DeclaredMdev(
        "1c8f2a70-6b1e-4b7e-9d1c-9f6b9a4e2b11", A100, "nvidia-700", persistent=False
    )
    wrong = DeclaredMdev(EXISTING_MDEV, A100, "nvidia-701")
    plan = reconcile_mdevs([lost, transient, wrong], Sysfs(fs.root).mdevs())
    assert plan.recreate == (lost,)
    assert [m.declared for m in plan.mismatched] == [wrong]
    assert plan.orphans == () and plan.ok == ()
    orphans = reconcile_mdevs([], Sysfs(fs.root).mdevs()).orphans
    assert [o.uuid for o in orphans] == [EXISTING_MDEV]
    made, failed = mgr.recreate(plan)
    assert [r.uuid for r in made] == [UUID] and failed == []
    again = reconcile_mdevs([lost], Sysfs(fs.root).mdevs())
    assert again.recreate == () and again.ok == (UUID,)
    bad = reconcile_mdevs([DeclaredMdev(UUID.replace("0b", "0c", 1), A100, "nvidia-701")], [])
    made, failed = mgr.recreate(bad)
    assert made == [] and "nvidia-701" in failed[0][1]
