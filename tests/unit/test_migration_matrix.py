"""Migratability: live / cold / blocked per VM and target (pure)."""

from __future__ import annotations

import pytest

from vmmgr.errors import FailedPrecondition
from vmmgr.migration import (
    HostMigrationInfo,
    Migratability,
    MigratabilityMatrix,
    MigrationPolicy,
    VMMigrationProfile,
    migratability,
)

NEW = (8, 2, 0)
A = HostMigrationInfo("a", NEW, "550.54.16", True)
B = HostMigrationInfo("b", NEW, "550.90.07", True)
OLDER = HostMigrationInfo("old", NEW, "550.54.10", True)
OTHER_BRANCH = HostMigrationInfo("br", NEW, "535.161.08", True)
NO_MIG = HostMigrationInfo("nomig", NEW, "550.90.07", False)
NO_DRIVER = HostMigrationInfo("plain", NEW)
OLD_QEMU = HostMigrationInfo("oldq", (7, 2, 0), "550.90.07", True)
ALLOW = MigrationPolicy(allow_vgpu_live_migration=True)


def vm(**kw) -> VMMigrationProfile:
    return VMMigrationProfile(vm_id="vm1", **kw)


def test_plain_vm_is_live() -> None:
    assert migratability(vm(), A, B) == Migratability("live", "")


def test_whole_pci_passthrough_is_cold_only() -> None:
    m = migratability(vm(pci_hostdevs=("0000:3b:00.0",)), A, B)
    assert m.mode == "cold" and "0000:3b:00.0" in m.reason and "passthrough" in m.reason


def test_host_pinned_device_blocks_everything() -> None:
    m = migratability(vm(host_pinned=("disk /dev/nvme0n1",), pci_hostdevs=("0000:3b:00.0",)), A)
    assert m.mode == "blocked" and "/dev/nvme0n1" in m.reason
    assert "passthrough" not in m.reason  # only the reasons that decided the verdict


def test_local_cdrom_refuses_live() -> None:
    m = migratability(vm(local_cdroms=("/var/lib/libvirt/images/seed.iso",)), A, B)
    assert m.mode == "cold" and "seed.iso" in m.reason


def test_stopped_vm_moves_cold() -> None:
    assert migratability(vm(running=False), A, B) == Migratability("cold", "not running")


def test_vgpu_needs_operator_consent() -> None:
    m = migratability(vm(vgpu_type="nvidia-471"), A, B)
    assert m.mode == "cold" and "not allowed by the operator" in m.reason
    assert migratability(vm(vgpu_type="nvidia-471"), A, B, ALLOW).mode == "live"


@pytest.mark.parametrize(
    ("dest", "why"),
    [
        (OLDER, "older vGPU manager"),
        (OTHER_BRANCH, "branches differ"),
        (NO_MIG, "does not support migration"),
        (NO_DRIVER, "has no vGPU manager"),
        (OLD_QEMU, "QEMU 7.2.0 on oldq < 8.1.0"),
    ],
)
def test_vgpu_live_needs_compatible_hosts(dest, why) -> None:
    m = migratability(vm(vgpu_type="nvidia-471"), A, dest, ALLOW)
    assert m.mode == "cold" and why in m.reason


def test_vgpu_without_a_known_target_is_provisionally_live() -> None:
    m = migratability(vm(vgpu_type="nvidia-471"), A, None, ALLOW)
    assert m.mode == "live" and "target must" in m.reason
    assert migratability(vm(vgpu_type="nvidia-471"), NO_MIG, None, ALLOW).mode == "cold"


def test_reasons_of_equal_weight_are_all_reported() -> None:
    m = migratability(vm(pci_hostdevs=("0000:3b:00.0",), local_cdroms=("/x.iso",)), A, B)
    assert m.mode == "cold" and "passthrough" in m.reason and "/x.iso" in m.reason


def test_require_raises_failed_precondition_with_the_reason() -> None:
    m = migratability(vm(pci_hostdevs=("0000:3b:00.0",)), A, B)
    m.require("cold")
    with pytest.raises(FailedPrecondition) as e:
        m.require("live", vm_id="vm1")
    assert "0000:3b:00.0" in str(e.value) and e.value.details["migratability"] == "cold"
    with pytest.raises(FailedPrecondition):
        Migratability("blocked", "pinned").require("cold")
    assert Migratability("live").allows("cold")
    assert not Migratability("cold").allows("live")


def test_matrix_looks_up_vm_host_and_target() -> None:
    profiles = [VMMigrationProfile("v1"), VMMigrationProfile("v2", vgpu_type="nvidia-471")]
    matrix = MigratabilityMatrix(profiles, [A, B, NO_MIG], {"v1": "a", "v2": "a"}, ALLOW)
    assert matrix.get("v1", "b").mode == "live"
    assert matrix.get("v2", "b").mode == "live"
    assert matrix.get("v2", "nomig").mode == "cold"
    assert matrix.get("ghost").mode == "blocked"
    assert "host zz" in matrix.get("v1", "zz").reason
