"""Evacuation planning for host maintenance, with the real scheduler as ``place_fn``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmmgr.errors import NotFound
from vmmgr.migration import (
    HostMigrationInfo,
    MigratabilityMatrix,
    MigrationPolicy,
    VMMigrationProfile,
    placement_request,
    plan_evacuation,
)
from vmmgr.scheduler import Scheduler, SchedulerConfig
from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    DeviceSnap,
    HostSnap,
    HostState,
    MdevTypeSnap,
    VMSnap,
)

SCHED = Scheduler(SchedulerConfig(cpu_ratio=1.0, memory_ratio=1.0))


def place(snapshot, request):
    return SCHED.place(snapshot, request).host


def gpu(host: str, n: int, claimed_by: str | None = None, model: str = "A100") -> DeviceSnap:
    return DeviceSnap(
        id=f"{host}/0000:{n:02x}:00.0",
        host=host,
        address=f"0000:{n:02x}:00.0",
        kind=DeviceKind.GPU,
        vendor_id=0x10DE,
        product_id=0x20B0,
        model=model,
        claimed_by=claimed_by,
    )


def host(name: str, cpus: int = 8, mem: int = 8192, **kw) -> HostSnap:
    return HostSnap(name=name, state=HostState.UP, cpus=cpus, memory_mib=mem, **kw)


def vmsnap(vm_id: str, on: str, vcpus: int = 2, mem: int = 2048, **kw) -> VMSnap:
    return VMSnap(id=vm_id, name=f"n-{vm_id}", host=on, vcpus=vcpus, memory_mib=mem, **kw)


def with_usage(hosts: list[HostSnap], vms: list[VMSnap]) -> ClusterSnapshot:
    """Fill used_* and vms of every host from the VMs placed on it."""
    out = []
    for h in hosts:
        mine = [v for v in vms if v.host == h.name]
        out.append(
            replace(
                h,
                used_vcpus=sum(v.vcpus for v in mine),
                used_memory_mib=sum(v.memory_mib for v in mine),
                vms=tuple(v.id for v in mine),
            )
        )
    return ClusterSnapshot(hosts=tuple(out), vms=tuple(vms))


def matrix(snapshot: ClusterSnapshot, profiles=(), policy=None, hosts=None) -> MigratabilityMatrix:
    known = {p.vm_id: p for p in profiles}
    profs = [known.get(v.id, VMMigrationProfile(v.id, running=v.running)) for v in snapshot.vms]
    infos = hosts or [HostMigrationInfo(h.name, (8, 2, 0)) for h in snapshot.hosts]
    return MigratabilityMatrix(profs, infos, {v.id: v.host or "" for v in snapshot.vms}, policy)


def test_capacity_is_accounted_between_placements() -> None:
    # h2 and h3 each have room for exactly one 4 GiB VM: both cannot go to the same host
    vms = [
        vmsnap("a", "h1", mem=4096),
        vmsnap("b", "h1", mem=4096),
        vmsnap("x", "h2", mem=4096),
        vmsnap("y", "h3", mem=4096),
    ]
    snap = with_usage([host("h1"), host("h2"), host("h3")], vms)
    plan = plan_evacuation(snap, "h1", matrix(snap), place)
    assert plan.feasible
    assert [s.action for s in plan.steps] == ["live", "live"]
    assert {s.target_host for s in plan.steps} == {"h2", "h3"}


def test_no_room_blocks_or_stops() -> None:
    vms = [vmsnap("a", "h1", mem=6144), vmsnap("x", "h2", mem=4096)]
    snap = with_usage([host("h1"), host("h2")], vms)
    plan = plan_evacuation(snap, "h1", matrix(snap), place)
    assert not plan.feasible
    assert plan.steps[0].action == "blocked" and plan.steps[0].reason == "no host fits"
    forced = plan_evacuation(snap, "h1", matrix(snap), place, stop_blocked=True)
    assert forced.feasible and forced.steps[0].action == "stop"
    assert "will be stopped" in forced.steps[0].reason


def test_maintenance_and_down_hosts_are_never_targets() -> None:
    vms = [vmsnap("a", "h1")]
    hosts = [
        host("h1"),
        HostSnap("h2", HostState.DOWN, 64, 65536),
        HostSnap("h3", HostState.MAINTENANCE, 64, 65536),
        host("h4"),
    ]
    snap = with_usage(hosts, vms)
    plan = plan_evacuation(snap, "h1", matrix(snap), place)
    assert plan.steps[0].target_host == "h4"


def test_whole_gpu_vm_moves_cold_to_a_host_with_a_free_gpu_of_its_model() -> None:
    vms = [
        vmsnap("g1", "h1", devices=("h1/0000:01:00.0",)),
        vmsnap("g2", "h1", devices=("h1/0000:02:00.0",)),
    ]
    hosts = [
        host("h1", devices=(gpu("h1", 1, "g1"), gpu("h1", 2, "g2"))),
        host("h2", cpus=32, mem=65536),  # lots of room, no GPU
        host("h3", devices=(gpu("h3", 1), gpu("h3", 2, model="H100-80GB"))),
    ]
    snap = with_usage(hosts, vms)
    profiles = [
        VMMigrationProfile("g1", pci_hostdevs=("0000:01:00.0",)),
        VMMigrationProfile("g2", pci_hostdevs=("0000:02:00.0",)),
    ]
    plan = plan_evacuation(snap, "h1", matrix(snap, profiles), place)
    # one free A100 on h3: the first VM takes it, the second finds none
    assert [(s.action, s.target_host) for s in plan.steps] == [("cold", "h3"), ("blocked", "")]
    assert "passthrough" in plan.steps[0].reason


def test_placement_request_carries_the_vm_devices() -> None:
    src = host("h1", devices=(gpu("h1", 1, "g1"), gpu("h1", 2, "g1")))
    req = placement_request(
        vmsnap(
            "g1", "h1", devices=(gpu("h1", 1).id, gpu("h1", 2).id), vgpu_type=None, groups=("web",)
        ),
        src,
    )
    assert [(g.model, g.count) for g in req.gpus] == [("A100", 2)]
    assert req.exclude_hosts == frozenset({"h1"}) and req.groups == ("web",)


def test_vgpu_vm_goes_live_only_to_a_compatible_host() -> None:
    vgpu_types = (MdevTypeSnap("nvidia-471", "GRID A100-4C", 10, 10),)
    hosts = [
        host("h1"),
        host(
            "h2",
            devices=(
                DeviceSnap(
                    "h2/0000:01:00.0",
                    "h2",
                    "0000:01:00.0",
                    DeviceKind.GPU,
                    0x10DE,
                    0x20B0,
                    "A100",
                    mdev_types=vgpu_types,
                ),
            ),
        ),
    ]
    vms = [vmsnap("v", "h1", vgpu_type="nvidia-471")]
    snap = with_usage(hosts, vms)
    profiles = [VMMigrationProfile("v", vgpu_type="nvidia-471")]
    infos_ok = [
        HostMigrationInfo("h1", (8, 2, 0), "550.54.16", True),
        HostMigrationInfo("h2", (8, 2, 0), "550.90.07", True),
    ]
    allow = MigrationPolicy(allow_vgpu_live_migration=True)
    plan = plan_evacuation(snap, "h1", matrix(snap, profiles, allow, infos_ok), place)
    assert (plan.steps[0].action, plan.steps[0].target_host) == ("live", "h2")
    infos_old = [infos_ok[0], HostMigrationInfo("h2", (8, 2, 0), "550.40.01", True)]
    plan = plan_evacuation(snap, "h1", matrix(snap, profiles, allow, infos_old), place)
    assert plan.steps[0].action == "cold" and "older vGPU manager" in plan.steps[0].reason


def test_pinned_vm_is_blocked_unless_stopping_is_allowed() -> None:
    vms = [vmsnap("p", "h1"), vmsnap("q", "h1")]
    snap = with_usage([host("h1"), host("h2", cpus=32, mem=65536)], vms)
    m = matrix(snap, [VMMigrationProfile("p", host_pinned=("usb 046d:c52b",))])
    plan = plan_evacuation(snap, "h1", m, place)
    by_vm = {s.vm_id: s for s in plan.steps}
    assert by_vm["p"].action == "blocked" and "usb 046d:c52b" in by_vm["p"].reason
    assert by_vm["q"].action == "live"
    assert not plan.feasible and plan.by_action("blocked") == (by_vm["p"],)
    assert plan_evacuation(snap, "h1", m, place, stop_blocked=True).feasible


def test_stopped_vms_move_cold_or_stay_stopped_and_go_last() -> None:
    vms = [vmsnap("off", "h1", mem=4096, running=False), vmsnap("on", "h1", mem=4096)]
    snap = with_usage([host("h1"), host("h2", mem=4096)], vms)
    plan = plan_evacuation(snap, "h1", matrix(snap), place)
    # the running VM is placed first and takes the only room
    assert [(s.vm_id, s.action) for s in plan.steps] == [("on", "live"), ("off", "stop")]
    assert plan.steps[1].reason.startswith("stays stopped") and plan.feasible
    roomy = with_usage([host("h1"), host("h2", mem=16384)], vms)
    plan = plan_evacuation(roomy, "h1", matrix(roomy), place)
    assert [(s.vm_id, s.action) for s in plan.steps] == [("on", "live"), ("off", "cold")]


def test_higher_priority_vms_are_placed_first() -> None:
    vms = [vmsnap("low", "h1", mem=4096, priority=0), vmsnap("high", "h1", mem=4096, priority=9)]
    snap = with_usage([host("h1"), host("h2", mem=4096)], vms)
    plan = plan_evacuation(snap, "h1", matrix(snap), place)
    assert [(s.vm_id, s.action) for s in plan.steps] == [("high", "live"), ("low", "blocked")]


def test_unknown_host_and_empty_host() -> None:
    snap = with_usage([host("h1"), host("h2")], [])
    with pytest.raises(NotFound) as e:
        plan_evacuation(snap, "nope", matrix(snap), place)
    assert e.value.field == "host"
    empty = plan_evacuation(snap, "h1", matrix(snap), place)
    assert empty.steps == () and empty.feasible
