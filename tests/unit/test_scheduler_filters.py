"""Scheduler filters: each rule rejects what it must, with a reason, and lets the rest through."""

from __future__ import annotations

import dataclasses

import pytest

from vmmgr.scheduler import Scheduler, SchedulerConfig
from vmmgr.scheduler.synthetic import fpga, gpu, host
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceHealth,
    GpuRequest,
    GroupSnap,
    HostState,
    MdevTypeSnap,
    MigSnap,
    NumaCell,
    PlacementRequest,
    VMSnap,
)


def req(vm: str = "vm1", vcpus: int = 2, mem: int = 1024, **kw: object) -> PlacementRequest:
    return PlacementRequest(vm, vcpus, mem, **kw)  # type: ignore[arg-type]


def snap(*hosts: object, vms: tuple = (), groups: tuple = ()) -> ClusterSnapshot:
    return ClusterSnapshot(hosts=tuple(hosts), vms=vms, groups=groups)  # type: ignore[arg-type]


def rejected_by(p: object, name: str) -> int:
    return p.explanation.rejections()[name]  # type: ignore[attr-defined]


def reasons(p: object, name: str) -> list[str]:
    rep = next(f for f in p.explanation.filters if f.name == name)  # type: ignore[attr-defined]
    return [r for _, r in rep.samples]


def test_down_and_maintenance_hosts_are_rejected_with_their_state() -> None:
    s = snap(
        host("a", state=HostState.DOWN),
        host("b", state=HostState.MAINTENANCE),
        host("c"),
    )
    p = Scheduler().place(s, req(), explain=True)
    assert p.host == "c"
    assert rejected_by(p, "host_state") == 2
    assert sorted(reasons(p, "host_state")) == ["host is down", "host is maintenance"]


def test_pinned_host_and_excluded_hosts() -> None:
    s = snap(host("a"), host("b"), host("c"))
    assert Scheduler().place(s, req(host="b")).host == "b"
    p = Scheduler().place(s, req(exclude_hosts=frozenset({"a", "b"})))
    assert p.host == "c" and rejected_by(p, "host_selection") == 2
    nowhere = Scheduler().place(s, req(host="zz"), explain=True)
    assert nowhere.host is None
    assert rejected_by(nowhere, "host_selection") == 3
    assert reasons(nowhere, "host_selection")[0] == "request pins host 'zz'"


def test_required_tags() -> None:
    s = snap(host("a", tags=frozenset({"ssd"})), host("b", tags=frozenset({"ssd", "10g"})))
    p = Scheduler().place(s, req(required_tags=frozenset({"ssd", "10g"})), explain=True)
    assert p.host == "b"
    assert reasons(p, "host_tags") == ["missing tag(s) 10g"]


def test_vcpu_overcommit_ratio_is_the_limit() -> None:
    s = snap(host("a", cpus=4, used_vcpus=12))  # default ratio 4 -> 16 vCPUs
    sched = Scheduler()
    assert sched.place(s, req(vcpus=4)).host == "a"
    p = sched.place(s, req(vcpus=5), explain=True)
    assert p.host is None
    assert reasons(p, "vcpu") == ["needs 5 vCPUs, 4 of 16 free (cpu ratio 4)"]
    assert Scheduler(SchedulerConfig(cpu_ratio=3.0)).place(s, req(vcpus=1)).host is None
    reserved = Scheduler(SchedulerConfig(reserved_host_cpus=1))  # (4 - 1) * 4 = 12
    assert reserved.place(s, req(vcpus=1)).host is None


def test_memory_ratio_and_reserved_memory() -> None:
    s = snap(host("a", memory_mib=8192, used_memory_mib=6144))
    assert Scheduler().place(s, req(mem=2048)).host == "a"
    assert Scheduler().place(s, req(mem=2049)).host is None
    assert Scheduler(SchedulerConfig(memory_ratio=1.5)).place(s, req(mem=6144)).host == "a"
    cfg = SchedulerConfig(reserved_host_memory_mib=1024)
    assert Scheduler(cfg).place(s, req(mem=2048)).host is None


def test_disk_filter_only_on_hosts_that_track_disk() -> None:
    s = snap(
        host("full", disk_gib=100, used_disk_gib=90),
        host("shared", disk_gib=0),
    )
    p = Scheduler().place(s, req(disk_gib=20), explain=True)
    assert p.host == "shared"
    assert reasons(p, "disk") == ["needs 20 GiB disk, 10 of 100 GiB free"]
    assert Scheduler().place(s, req(disk_gib=5, host="full")).host == "full"


def test_gpu_model_count_taint_and_claims() -> None:
    devs = [
        gpu("a", 0),
        gpu("a", 1, health=DeviceHealth.TAINTED),
        gpu("a", 2, claimed_by="other"),
        gpu("a", 3),
    ]
    s = snap(host("a", devices=devs), host("b"))
    sched = Scheduler()
    p = sched.place(s, req(gpus=(GpuRequest("h100-80gb", 2),)))
    assert p.host == "a"
    assert sorted(d.device_id for d in p.devices) == ["a/0000:10:00.0", "a/0000:13:00.0"]
    assert {d.kind for d in p.devices} == {"gpu"}
    three = sched.place(s, req(gpus=(GpuRequest("H100-80GB", 3),)), explain=True)
    assert three.host is None
    assert rejected_by(three, "gpu") == 2
    msgs = reasons(three, "gpu")
    assert "needs 3 x H100-80GB, 2 of 4 free" in msgs[0] and "1 tainted" in msgs[0]
    assert msgs[1] == "no H100-80GB GPU"


def test_gpu_by_pci_ids_and_unknown_model() -> None:
    s = snap(host("a", devices=[gpu("a", 0)]))
    assert Scheduler().place(s, req(gpus=(GpuRequest("10de:2330"),))).host == "a"
    assert Scheduler().place(s, req(gpus=(GpuRequest("B200"),))).host is None


def test_unknown_health_is_a_knob() -> None:
    s = snap(host("a", devices=[gpu("a", 0, health=DeviceHealth.UNKNOWN)]))
    r = req(gpus=(GpuRequest("H100-80GB"),))
    assert Scheduler().place(s, r).host == "a"
    strict = Scheduler(SchedulerConfig(allow_unknown_device_health=False))
    assert strict.place(s, r).host is None


def test_iommu_group_shared_with_a_used_device_blocks_whole_passthrough() -> None:
    devs = [gpu("a", 0, group=7, claimed_by="other"), gpu("a", 1, group=7), gpu("a", 2)]
    s = snap(host("a", devices=devs))
    p = Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB"),)))
    assert [d.device_id for d in p.devices] == ["a/0000:12:00.0"]
    assert Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB", 2),))).host is None


def test_iommu_mates_of_the_same_vm_may_go_together() -> None:
    devs = [gpu("a", 0, group=7), gpu("a", 1, group=7)]
    s = snap(host("a", devices=devs))
    p = Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB", 2),)))
    assert len(p.devices) == 2


def test_virtual_functions_are_not_whole_gpus() -> None:
    s = snap(host("a", devices=[gpu("a", 0, is_vf=True)]))
    assert Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB"),))).host is None


VT = (
    MdevTypeSnap("nvidia-1", "GRID-4Q", 4, 4),
    MdevTypeSnap("nvidia-2", "GRID-8Q", 2, 2),
)


def test_vgpu_active_type_blocks_other_types() -> None:
    s = snap(
        host(
            "a",
            devices=[
                gpu("a", 0, model="L40S", mdev_types=VT, active_mdev_type="nvidia-1", mdev_claims=1)
            ],
        )
    )
    assert Scheduler().place(s, req(vgpu_type="nvidia-1")).host == "a"
    p = Scheduler().place(s, req(vgpu_type="nvidia-2"), explain=True)
    assert p.host is None
    assert "no capacity for vGPU nvidia-2" in reasons(p, "vgpu")[0]


def test_vgpu_free_gpu_takes_any_type_and_display_names_resolve() -> None:
    s = snap(host("a", devices=[gpu("a", 0, model="L40S", mdev_types=VT)]))
    p = Scheduler().place(s, req(vgpu_type="grid-8q"))
    assert p.host == "a"
    assert p.devices[0].kind == "vgpu" and p.devices[0].profile == "nvidia-2"


def test_vgpu_claims_of_unknown_type_and_exhausted_type() -> None:
    unknown = snap(host("a", devices=[gpu("a", 0, model="L40S", mdev_types=VT, mdev_claims=1)]))
    assert Scheduler().place(unknown, req(vgpu_type="nvidia-1")).host is None
    full_types = tuple(dataclasses.replace(t, available=0) for t in VT)
    full = snap(host("a", devices=[gpu("a", 0, model="L40S", mdev_types=full_types)]))
    assert Scheduler().place(full, req(vgpu_type="nvidia-1")).host is None


def test_vgpu_not_on_a_gpu_claimed_whole_or_next_to_one() -> None:
    devs = [
        gpu("a", 0, model="L40S", mdev_types=VT, claimed_by="x"),
        gpu("a", 1, model="L40S", mdev_types=VT, group=0),
    ]
    assert Scheduler().place(snap(host("a", devices=devs)), req(vgpu_type="nvidia-1")).host is None


def test_mig_slices_instance_limits_and_mode() -> None:
    full = gpu("a", 0, mig=True)
    assert full.mig is not None
    seven = dataclasses.replace(full.mig, instances=("4g.40gb", "3g.40gb"))
    s = snap(host("a", devices=[dataclasses.replace(full, mig=seven)]))
    p = Scheduler().place(s, req(mig_profile="1g.10gb"), explain=True)
    assert p.host is None
    assert "does not fit" in reasons(p, "mig")[0]
    limit = dataclasses.replace(full.mig, instances=("1g.20gb",) * 4)  # 4 of max 4, 3 slices free
    s2 = snap(host("a", devices=[dataclasses.replace(full, mig=limit)]))
    assert Scheduler().place(s2, req(mig_profile="1g.20gb")).host is None
    p2 = Scheduler().place(s2, req(mig_profile="3g.40gb"))
    assert p2.host == "a" and p2.devices[0].kind == "mig"
    off = dataclasses.replace(
        full, mig=MigSnap(enabled=False, total_slices=7, profiles=full.mig.profiles)
    )
    p3 = Scheduler().place(snap(host("a", devices=[off])), req(mig_profile="1g.10gb"))
    assert p3.host is None


def test_fpga_model_and_virtual_functions() -> None:
    vf = dataclasses.replace(fpga("a", 1), is_vf=True, iommu_group=200)
    s = snap(host("a", devices=[vf]), host("b", devices=[fpga("b", 0, model="AGILEX")]))
    assert Scheduler().place(s, req(fpga_model="ALVEO-U250", fpga_count=1)).host is None
    p = Scheduler().place(s, req(fpga_model="alveo-u250", fpga_allow_vf=True))
    assert p.host == "a" and p.devices[0].kind == "fpga"
    p2 = Scheduler().place(s, req(fpga_model="AGILEX"), explain=True)
    assert p2.host == "b"
    assert reasons(p2, "fpga") == ["no AGILEX FPGA"]


def _grouped(policy: str, hard: bool = True) -> ClusterSnapshot:
    vms = (VMSnap("m1", "m1", "a", 1, 512), VMSnap("m2", "m2", "b", 1, 512))
    g = GroupSnap("g", policy, hard=hard, members=frozenset({"m1", "m2", "new"}))
    return snap(host("a"), host("b"), host("c"), vms=vms, groups=(g,))


def test_hard_anti_affinity_keeps_members_apart() -> None:
    p = Scheduler().place(_grouped("anti-affinity"), req("new", groups=("g",)), explain=True)
    assert p.host == "c"
    assert rejected_by(p, "affinity") == 2
    assert reasons(p, "affinity")[0] == "anti-affinity group 'g': 1 member(s) already here"


def test_anti_affinity_does_not_count_the_vm_itself() -> None:
    # m1 re-placed (e.g. migrating away from a): its own old host is not a conflict
    p = Scheduler().place(_grouped("anti-affinity"), req("m1", groups=("g",), host="a"))
    assert p.host == "a"


def test_hard_affinity_joins_the_members() -> None:
    p = Scheduler().place(_grouped("affinity"), req("new", groups=("g",)), explain=True)
    assert p.host in ("a", "b")
    assert rejected_by(p, "affinity") == 1
    assert reasons(p, "affinity")[0].startswith("affinity group 'g': members run on")


def test_soft_groups_do_not_filter() -> None:
    p = Scheduler().place(_grouped("anti-affinity", hard=False), req("new", groups=("g",)))
    assert p.explanation.rejections()["affinity"] == 0
    assert p.host == "c"  # the soft_affinity weigher still prefers the empty host


def test_numa_strict_needs_one_cell_for_vcpus_memory_and_devices() -> None:
    cells = (NumaCell(0, 8, 16384, used_cpus=30), NumaCell(1, 8, 16384))
    devs = [gpu("a", 0, numa=0), gpu("a", 1, numa=1)]
    s = snap(host("a", cpus=16, memory_mib=32768, numa_cells=cells, devices=devs))
    ok = Scheduler().place(s, req(vcpus=4, gpus=(GpuRequest("H100-80GB"),), numa_strict=True))
    assert ok.host == "a" and ok.numa_cell == 1
    assert [d.numa_node for d in ok.devices] == [1]
    two = Scheduler().place(
        s, req(vcpus=4, gpus=(GpuRequest("H100-80GB", 2),), numa_strict=True), explain=True
    )
    assert two.host is None
    msg = reasons(two, "numa")[0]
    assert msg.startswith("no NUMA cell holds 4 vCPUs, 1024 MiB and its devices")
    # without numa_strict the same request spans both cells
    assert Scheduler().place(s, req(vcpus=4, gpus=(GpuRequest("H100-80GB", 2),))).host == "a"


def test_numa_strict_on_a_host_without_numa_information_is_one_cell() -> None:
    s = snap(host("a", cells=0, cpus=4, memory_mib=4096))
    assert Scheduler().place(s, req(vcpus=4, mem=4096, numa_strict=True)).host == "a"
    p = Scheduler().place(s, req(vcpus=4, mem=4097, numa_strict=True))
    assert p.host is None and p.explanation.rejections()["memory"] == 1


def test_devices_with_unknown_numa_node_never_satisfy_numa_strict() -> None:
    s = snap(host("a", devices=[gpu("a", 0, numa=None)]))
    r = req(gpus=(GpuRequest("H100-80GB"),), numa_strict=True)
    p = Scheduler().place(s, r)
    assert p.host is None and p.explanation.rejections()["numa"] == 1


def test_disabled_filter_lets_hosts_through() -> None:
    s = snap(host("a", tags=frozenset()))
    names = tuple(n for n in SchedulerConfig().enabled_filters if n != "host_tags")
    sched = Scheduler(SchedulerConfig(enabled_filters=names))
    assert sched.place(s, req(required_tags=frozenset({"x"}))).host == "a"
    assert "host_tags" not in sched.place(s, req()).explanation.rejections()


@pytest.mark.parametrize("count", [1, 2])
def test_devices_are_described(count: int) -> None:
    s = snap(host("a", devices=[gpu("a", n) for n in range(2)]))
    p = Scheduler().place(s, req(gpus=(GpuRequest("H100-80GB", count),)))
    assert len(p.devices) == count
    assert all(d.model == "H100-80GB" and d.numa_node == 0 for d in p.devices)


def test_sriov_pf_and_its_vfs_block_each_other() -> None:
    pf = fpga("a", 0)
    vf = dataclasses.replace(fpga("a", 1), is_vf=True, pf=pf.id, claimed_by="other")
    s = snap(host("a", devices=[pf, vf]))
    assert Scheduler().place(s, req(fpga_model="ALVEO-U250")).host is None
    free_vf = dataclasses.replace(vf, claimed_by=None)
    busy_pf = dataclasses.replace(pf, claimed_by="other")
    s2 = snap(host("a", devices=[busy_pf, free_vf]))
    assert Scheduler().place(s2, req(fpga_model="ALVEO-U250", fpga_allow_vf=True)).host is None
    s3 = snap(host("a", devices=[pf, free_vf]))
    p = Scheduler().place(s3, req(fpga_model="ALVEO-U250", fpga_count=2, fpga_allow_vf=True))
    assert p.host is None  # a PF with VFs is not passed through whole: one device, not two
    p1 = Scheduler().place(s3, req(fpga_model="ALVEO-U250", fpga_allow_vf=True))
    assert p1.host == "a"


def test_sriov_vgpu_siblings_share_one_type() -> None:
    pf = gpu("a", 0, model="A100")
    vf1 = gpu(
        "a",
        1,
        model="A100",
        is_vf=True,
        pf=pf.id,
        mdev_types=VT,
        active_mdev_type="nvidia-1",
        mdev_claims=1,
    )
    vf2 = gpu("a", 2, model="A100", is_vf=True, pf=pf.id, mdev_types=VT)
    s = snap(host("a", devices=[pf, vf1, vf2]))
    assert Scheduler().place(s, req(vgpu_type="nvidia-2")).host is None
    p = Scheduler().place(s, req(vgpu_type="nvidia-1"))
    assert p.host == "a"
    batch = Scheduler().place_batch(
        snap(
            host(
                "a",
                devices=[pf, dataclasses.replace(vf1, active_mdev_type=None, mdev_claims=0), vf2],
            )
        ),
        [req("x", vgpu_type="nvidia-2"), req("y", vgpu_type="nvidia-1")],
    )
    assert batch[0].ok and not batch[1].ok  # the first claim fixes the type for both VFs


def test_refusal_names_the_claimed_device_sharing_the_iommu_group() -> None:
    from vmmgr.scheduler import Scheduler
    from vmmgr.snapshot import (
        ClusterSnapshot,
        DeviceKind,
        DeviceSnap,
        GpuRequest,
        HostSnap,
        HostState,
        PlacementRequest,
    )

    a = DeviceSnap(
        "h/0000:86:00.0", "h", "0000:86:00.0", DeviceKind.GPU, 0x10DE, 0x27B8, "L4", iommu_group=70
    )
    b = DeviceSnap(
        "h/0000:87:00.0",
        "h",
        "0000:87:00.0",
        DeviceKind.GPU,
        0x10DE,
        0x27B8,
        "L4",
        iommu_group=70,
        claimed_by="vm-x",
    )
    snap = ClusterSnapshot(hosts=(HostSnap("h", HostState.UP, 16, 65536, devices=(a, b)),))
    p = Scheduler().place(snap, PlacementRequest("vm-y", 1, 1024, gpus=(GpuRequest("L4"),)))
    assert p.host is None
    (gpu,) = [f for f in p.explanation.filters if f.rejected]
    reason = gpu.samples[0][1]
    assert "h/0000:86:00.0 shares its IOMMU group with h/0000:87:00.0" in reason
    assert "h/0000:87:00.0 in use" in reason
