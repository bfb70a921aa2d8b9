"""Claims on the GPU host of tests/libvirt/fixtures/gpu-host.xml: who gets which device."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.fixtures.gpu_host import HOST, gpu_host_inventory, gpu_host_snap
from vmmgr.devices.claims import (
    DeviceRequest,
    apply_claims,
    choose_devices,
    release_claims,
)
from vmmgr.devices.model import GpuFacts, MigFacts, MigInstanceFacts, MigProfileFacts
from vmmgr.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from vmmgr.snapshot import DeviceHealth, GpuRequest, HostSnap, PlacementRequest


def did(address: str) -> str:
    return f"{HOST}/{address}"


def gpus(model: str, count: int = 1) -> DeviceRequest:
    return DeviceRequest(gpus=(GpuRequest(model, count),))


def test_whole_gpu_by_name_or_id() -> None:
    host = gpu_host_snap()
    for model in ("H100-80GB", "h100-80gb", "10de:2330"):
        c = choose_devices(host, gpus(model), vm_id="vm1")
        assert [p.address for p in c.passthrough] == ["0000:3b:00.0"]
        assert c.passthrough[0].original_driver == "nvidia"


def test_group_companion_goes_along() -> None:
    c = choose_devices(gpu_host_snap(), gpus("RTX-A6000"), vm_id="vm1")
    assert c.passthrough[0].companions == (did("0000:18:00.1"),)
    assert set(c.whole_device_ids) == {did("0000:18:00.0"), did("0000:18:00.1")}


def test_strict_isolation_refuses_shared_group_naming_the_mates() -> None:
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(gpu_host_snap(), gpus("RTX-A6000"), vm_id="vm1", whole_group=False)
    assert "0000:18:00.1" in str(err.value) and err.value.field == "gpus[0].model"


def test_two_gpus_in_one_group_cannot_be_split() -> None:
    host = gpu_host_snap()
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(host, gpus("L4", 1), vm_id="vm1")
    assert "exactly 1" in str(err.value)
    both = choose_devices(host, gpus("L4", 2), vm_id="vm1")
    assert sorted(p.address for p in both.passthrough) == ["0000:86:00.0", "0000:87:00.0"]


def test_explicit_address_in_a_shared_group() -> None:
    host = gpu_host_snap()
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(host, DeviceRequest(addresses=("0000:86:00.0",)), vm_id="vm1")
    assert "0000:87:00.0" in str(err.value) and err.value.field == "addresses"
    c = choose_devices(host, DeviceRequest(addresses=("86:00.0", "0000:87:00.0")), vm_id="vm1")
    assert len(c.passthrough) == 2
    with pytest.raises(InvalidArgument) as bad:
        choose_devices(host, DeviceRequest(addresses=("0000:ee:00.0",)), vm_id="vm1")
    assert bad.value.field == "addresses" and "0000:ee:00.0" in str(bad.value)


def test_claimed_device_and_group_mate_of_a_claimed_device() -> None:
    host = gpu_host_snap(claimed_by={did("0000:3b:00.0"): "vm-other", did("0000:18:00.1"): "vm-x"})
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(host, DeviceRequest(addresses=("0000:3b:00.0",)), vm_id="vm1")
    assert "0000:3b:00.0" in str(err.value) and "vm-other" in str(err.value)
    with pytest.raises(FailedPrecondition) as err2:
        choose_devices(host, DeviceRequest(addresses=("0000:18:00.0",)), vm_id="vm1")
    assert "0000:18:00.1" in str(err2.value) and "vm-x" in str(err2.value)
    with pytest.raises(FailedPrecondition) as err3:  # the only H100 is held
        choose_devices(host, gpus("H100-80GB"), vm_id="vm1")
    assert "vm-other" in str(err3.value)


def test_counts_the_host_cannot_meet_name_model_and_counts() -> None:
    with pytest.raises(ResourceExhausted) as err:
        choose_devices(gpu_host_snap(), gpus("A100", 2), vm_id="vm1")
    msg = str(err.value)
    assert "A100" in msg and "requested 2" in msg and "1 free of 2" in msg
    assert "nvidia-700" in msg  # why the other A100 is not free: it carries mdevs
    assert err.value.field == "gpus[0].model"
    with pytest.raises(ResourceExhausted) as none:
        choose_devices(gpu_host_snap(), gpus("T4"), vm_id="vm1")
    assert "T4" in str(none.value) and "0 free of 0" in str(none.value)


def test_unknown_model_is_invalid_argument_naming_it() -> None:
    with pytest.raises(InvalidArgument) as err:
        choose_devices(gpu_host_snap(), gpus("Z9000"), vm_id="vm1")
    assert err.value.field == "gpus[0].model" and "Z9000" in str(err.value)
    with pytest.raises(InvalidArgument) as count:
        choose_devices(gpu_host_snap(), gpus("A100", 0), vm_id="vm1")
    assert count.value.field == "gpus[0].count"


def test_tainted_devices_are_never_chosen() -> None:
    host = gpu_host_snap(health={did("0000:3b:00.0"): DeviceHealth.TAINTED})
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(host, gpus("H100-80GB"), vm_id="vm1")
    assert "tainted" in str(err.value)


def test_fpga_pf_and_vfs_exclude_each_other() -> None:
    host = gpu_host_snap()
    pf = choose_devices(host, DeviceRequest(fpga_model="PAC-N3000"), vm_id="vm1")
    assert [p.address for p in pf.passthrough] == ["0000:b1:00.0"]
    after_pf = apply_claims(host, pf)
    with pytest.raises((ResourceExhausted, FailedPrecondition)) as err:
        choose_devices(
            after_pf, DeviceRequest(fpga_model="PAC-N3000-VF", fpga_allow_vf=True), vm_id="vm2"
        )
    assert "0000:b1:00.0" in str(err.value)
    vf = choose_devices(
        host, DeviceRequest(fpga_model="PAC-N3000-VF", fpga_allow_vf=True), vm_id="vm2"
    )
    assert vf.passthrough[0].address == "0000:b1:00.1"
    with pytest.raises(FailedPrecondition) as err2:
        choose_devices(apply_claims(host, vf), DeviceRequest(fpga_model="PAC-N3000"), vm_id="vm3")
    assert "virtual function 0000:b1:00.1" in str(err2.value)
    # VFs are never handed out unless the request allows them.
    with pytest.raises(ResourceExhausted):
        choose_devices(host, DeviceRequest(fpga_model="PAC-N3000-VF"), vm_id="vm4")


def test_fpga_by_name_and_from_placement_request() -> None:
    req = DeviceRequest.from_placement(
        PlacementRequest(vm_id="vm1", vcpus=2, memory_mib=1024, fpga_model="alveo-u250")
    )
    c = choose_devices(gpu_host_snap(), req, vm_id="vm1")
    assert (
        c.passthrough[0].address == "0000:af:00.0" and c.passthrough[0].original_driver == "xclmgmt"
    )


def test_vgpus_count_against_available_instances_and_pack() -> None:
    host = gpu_host_snap()
    c = choose_devices(host, DeviceRequest(vgpu_type="nvidia-700", vgpu_count=3), vm_id="vm1")
    assert [v.parent_address for v in c.vgpus] == ["0000:5e:00.0"] * 3
    after = apply_claims(host, c)
    a100 = next(d for d in after.devices if d.address == "0000:5e:00.0")
    assert a100.mdev_claims == 3
    assert next(t for t in a100.mdev_types if t.name == "nvidia-700").available == 16
    by_name = choose_devices(host, DeviceRequest(vgpu_type="grid a100-8c", vgpu_count=5), vm_id="v")
    assert {v.mdev_type for v in by_name.vgpus} == {"nvidia-471"}
    with pytest.raises(ResourceExhausted) as err:
        choose_devices(host, DeviceRequest(vgpu_type="nvidia-471", vgpu_count=6), vm_id="vm1")
    assert "requested 6" in str(err.value) and "can give 5" in str(err.value)
    assert err.value.field == "vgpu_type"


def test_one_vgpu_type_per_gpu_and_unknown_types() -> None:
    host = gpu_host_snap()
    first = apply_claims(
        host, choose_devices(host, DeviceRequest(vgpu_type="nvidia-470"), vm_id="vm1")
    )
    with pytest.raises(ResourceExhausted):  # d8:00.0 now runs 470: no 471 beside it
        choose_devices(first, DeviceRequest(vgpu_type="nvidia-471"), vm_id="vm2")
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(host, DeviceRequest(vgpu_type="nvidia-999"), vm_id="vm1")
    assert err.value.field == "vgpu_type" and "nvidia-999" in str(err.value)


def test_whole_gpu_and_vgpu_exclude_each_other() -> None:
    host = gpu_host_snap()
    v = apply_claims(host, choose_devices(host, DeviceRequest(vgpu_type="nvidia-470"), vm_id="a"))
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(v, DeviceRequest(addresses=("0000:d8:00.0",)), vm_id="b")
    assert "vGPU" in str(err.value)
    w = apply_claims(
        host, choose_devices(host, DeviceRequest(addresses=("0000:d8:00.0",)), vm_id="a")
    )
    with pytest.raises(ResourceExhausted):
        choose_devices(w, DeviceRequest(vgpu_type="nvidia-470"), vm_id="b")


def test_numa_strict_keeps_every_device_on_one_node() -> None:
    host = gpu_host_snap()
    ok = choose_devices(
        host,
        DeviceRequest(gpus=(GpuRequest("L4", 2),), fpga_model="ALVEO-U250", numa_strict=True),
        vm_id="vm1",
    )
    assert {p.address for p in ok.passthrough} == {"0000:86:00.0", "0000:87:00.0", "0000:af:00.0"}
    # The free A100 is on node 1 and the H100 on node 0: no single node holds both.
    with pytest.raises(ResourceExhausted) as err:
        choose_devices(
            host,
            DeviceRequest(gpus=(GpuRequest("A100"), GpuRequest("H100-80GB")), numa_strict=True),
            vm_id="vm1",
        )
    assert "no single NUMA node" in str(err.value) and "node 0" in str(err.value)
    loose = choose_devices(
        host, DeviceRequest(gpus=(GpuRequest("A100"), GpuRequest("H100-80GB"))), vm_id="vm1"
    )
    assert {p.address for p in loose.passthrough} == {"0000:3b:00.0", "0000:d8:00.0"}
    pinned = choose_devices(host, DeviceRequest(fpga_model="ALVEO-U250", numa_node=1), vm_id="v")
    assert pinned.passthrough[0].address == "0000:af:00.0"
    with pytest.raises(ResourceExhausted):
        choose_devices(host, DeviceRequest(fpga_model="ALVEO-U250", numa_node=0), vm_id="v")


def _mig_host(enabled: bool = True) -> HostSnap:
    mig = MigFacts(
        enabled=enabled,
        pending=enabled,
        profiles=(
            MigProfileFacts(0, 19, "1g.10gb", 1, 9984, 7),
            MigProfileFacts(1, 14, "2g.20gb", 2, 20096, 3),
            MigProfileFacts(2, 9, "3g.40gb", 3, 40448, 2),
            MigProfileFacts(4, 0, "7g.80gb", 7, 81152, 1),
        ),
        instances=(MigInstanceFacts(1, 9, "3g.40gb", 0, 4),) if enabled else (),
    )
    inv = gpu_host_inventory(gpus=[GpuFacts(index=0, address="0000:3b:00.0", mig=mig)])
    return gpu_host_snap(inv)


def test_mig_reuses_free_instances_then_creates() -> None:
    host = _mig_host()
    c = choose_devices(host, DeviceRequest(mig_profile="3g.40gb", mig_count=2), vm_id="vm1")
    assert [(m.profile, m.create) for m in c.migs] == [("3g.40gb", False), ("3g.40gb", True)]
    after = apply_claims(host, c)
    h100 = next(d for d in after.devices if d.address == "0000:3b:00.0")
    assert h100.mig is not None and h100.mig.claimed == ("3g.40gb", "3g.40gb")
    assert h100.mig.used_slices == 6
    # One compute slice is free but both 3g instances hold all 8 memory slices: stranded.
    for profile in ("2g.20gb", "1g.10gb"):
        with pytest.raises(ResourceExhausted) as err:
            choose_devices(after, DeviceRequest(mig_profile=profile), vm_id="vm2")
        assert f"MIG {profile}: requested 1" in str(err.value)
    # Beside the free 3g@0: 1g instances fit at memory slices 4, 5, 6 but never at 7.
    small = choose_devices(host, DeviceRequest(mig_profile="1g.10gb", mig_count=3), vm_id="v")
    assert sorted(m.start for m in small.migs) == [4, 5, 6] and all(m.create for m in small.migs)
    with pytest.raises(ResourceExhausted) as four:
        choose_devices(host, DeviceRequest(mig_profile="1g.10gb", mig_count=4), vm_id="v")
    assert "requested 4" in str(four.value) and "can give 3" in str(four.value)
    with pytest.raises(FailedPrecondition):  # MIG slices in use: no whole passthrough
        choose_devices(after, gpus("H100-80GB"), vm_id="vm3")


def test_mig_errors() -> None:
    with pytest.raises(FailedPrecondition) as off:
        choose_devices(_mig_host(False), DeviceRequest(mig_profile="1g.10gb"), vm_id="v")
    assert "MIG mode is off" in str(off.value) and off.value.field == "mig_profile"
    with pytest.raises(FailedPrecondition) as unknown:
        choose_devices(_mig_host(), DeviceRequest(mig_profile="9g.99gb"), vm_id="v")
    assert "9g.99gb" in str(unknown.value)


def test_release_is_the_inverse_of_apply() -> None:
    host = gpu_host_snap()
    c = choose_devices(
        host,
        DeviceRequest(gpus=(GpuRequest("RTX-A6000"),), vgpu_type="nvidia-470", vgpu_count=2),
        vm_id="vm1",
    )
    held = apply_claims(host, c)
    assert held != host
    assert release_claims(held, c) == host
    assert replace(c, vm_id="x").whole_device_ids == c.whole_device_ids


def test_a_group_holding_another_model_is_not_split() -> None:
    host = gpu_host_snap()
    mixed = replace(
        host,
        devices=tuple(
            replace(d, model="T4", product_id=0x1EB8) if d.address == "0000:87:00.0" else d
            for d in host.devices
        ),
    )
    with pytest.raises(FailedPrecondition) as err:
        choose_devices(mixed, gpus("L4"), vm_id="vm1")
    assert "0000:87:00.0 (T4)" in str(err.value)


def test_bad_counts_and_numa_of_explicit_devices() -> None:
    host = gpu_host_snap()
    for req, field in (
        (DeviceRequest(fpga_model="ALVEO-U250", fpga_count=0), "fpga_count"),
        (DeviceRequest(vgpu_type="nvidia-470", vgpu_count=0), "vgpu_count"),
        (DeviceRequest(mig_profile="1g.10gb", mig_count=-1), "mig_count"),
    ):
        with pytest.raises(InvalidArgument) as err:
            choose_devices(host, req, vm_id="vm1")
        assert err.value.field == field
    with pytest.raises(FailedPrecondition) as numa:
        choose_devices(host, DeviceRequest(addresses=("0000:af:00.0",), numa_node=0), vm_id="v")
    assert "NUMA node 0" in str(numa.value) and numa.value.field == "addresses"
    assert choose_devices(host, DeviceRequest(), vm_id="v").empty
