"""Store suite: build_snapshot turns the store into the frozen ClusterSnapshot decisions read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.snapshot import DeviceHealth, DeviceKind, HostState, MigSnap, NumaCell
from vmmgr.state import Store, build_snapshot, repo
from vmmgr.state.models import (
    VM,
    Device,
    DeviceSample,
    Host,
    HostSample,
    PlacementGroup,
)
from vmmgr.state.repo import ClaimRequest

T0 = datetime(2030, 5, 1, tzinfo=UTC)
MIG = {
    "enabled": True,
    "total_slices": 7,
    "profiles": [
        {"name": "1g.10gb", "slices": 1, "memory_mib": 9856, "max_instances": 7},
        {"name": "3g.40gb", "slices": 3, "memory_mib": 40192, "max_instances": 2},
    ],
    "instances": ["3g.40gb", "1g.10gb"],  # one foreign 1g instance; the 3g one is claimed
}


def test_empty_store_gives_empty_snapshot(store: Store) -> None:
    with store.read_session() as s:
        snap = build_snapshot(s)
    assert snap.hosts == () and snap.vms == () and snap.groups == ()


def test_snapshot_sums_usage_devices_groups(store: Store) -> None:
    with store.session() as s:
        repo.add_host(
            s,
            Host(
                name="h1",
                uri="x",
                state="up",
                cpus=64,
                memory_mib=262144,
                disk_gib=2000,
                tags=["gpu", "ssd"],
                pool="rack1",
                numa_cells=[
                    {"id": 0, "cpus": 32, "memory_mib": 131072},
                    {"id": 1, "cpus": 32, "memory_mib": 131072},
                ],
            ),
        )
        repo.add_host(s, Host(name="h2", uri="x", state="maintenance", cpus=8, memory_mib=8192))
        repo.upsert_devices(
            s,
            "h1",
            [
                Device(
                    host="h1",
                    address="0000:3b:00.0",
                    kind="gpu",
                    vendor_id=0x10DE,
                    product_id=0x2330,
                    model="H100-80GB",
                    numa_node=0,
                    iommu_group=12,
                    health="healthy",
                ),
                Device(
                    host="h1",
                    address="0000:5e:00.0",
                    kind="gpu",
                    model="A100",
                    health="healthy",
                    mdev_types=[
                        {
                            "name": "nvidia-471",
                            "display_name": "4C",
                            "available": 8,
                            "max_instances": 10,
                        }
                    ],
                ),
                Device(
                    host="h1",
                    address="0000:86:00.0",
                    kind="gpu",
                    model="H100-80GB",
                    health="tainted",
                    mig=MIG,
                ),
                Device(
                    host="h1",
                    address="0000:af:00.1",
                    kind="fpga",
                    model="ALVEO-U250",
                    sriov={"is_pf": False, "pf": "0000:af:00.0"},
                ),
            ],
        )
        repo.upsert_devices(s, "h2", [Device(host="h2", address="0000:01:00.0", kind="gpu")])
        repo.upsert_devices(s, "h2", [])  # it vanished: not in the snapshot
        a = repo.add_vm(
            s,
            VM(
                name="a",
                host="h1",
                vcpus=4,
                memory_mib=8192,
                disk_gib=20,
                state="running",
                ha=True,
                ha_priority=5,
            ),
        )
        b = repo.add_vm(
            s, VM(name="b", host="h1", vcpus=2, memory_mib=2048, disk_gib=10, state="stopped")
        )
        c = repo.add_vm(s, VM(name="c", host="h1", vcpus=1, memory_mib=1024, state="error"))
        d = repo.add_vm(s, VM(name="d", host="h2", vcpus=1, memory_mib=512, state="paused"))
        e = repo.add_vm(s, VM(name="e", vcpus=16, memory_mib=65536, state="pending"))
        repo.claim_device(s, a.id, ClaimRequest("h1/0000:3b:00.0"))
        repo.claim_device(
            s, b.id, ClaimRequest("h1/0000:5e:00.0", kind="mdev", mdev_type="nvidia-471")
        )
        repo.claim_device(
            s, c.id, ClaimRequest("h1/0000:5e:00.0", kind="mdev", mdev_type="nvidia-471")
        )
        repo.add_group(s, PlacementGroup(name="db", policy="anti-affinity"))
        repo.add_group(s, PlacementGroup(name="empty", policy="affinity", hard=False))
        repo.set_vm_groups(s, a.id, ["db"])
        repo.set_vm_groups(s, d.id, ["db"])
        repo.append_device_samples(
            s,
            [
                DeviceSample(device_id="h1/0000:3b:00.0", time=T0, gpu_util=10.0),
                DeviceSample(device_id="h1/0000:3b:00.0", time=T0 + timedelta(1), gpu_util=85.0),
                DeviceSample(device_id="h1/0000:5e:00.0", time=T0, gpu_util=None),
            ],
        )
        repo.append_host_samples(
            s,
            [
                HostSample(host="h1", time=T0, cpu_util=0.9),
                HostSample(host="h1", time=T0 + timedelta(1), cpu_util=0.25),
            ],
        )
    with store.session() as s:  # the store does not judge health; the scheduler does
        repo.claim_device(
            s, d.id, ClaimRequest("h1/0000:86:00.0", kind="mig", mig_profile="3g.40gb")
        )
        repo.claim_device(
            s, e.id, ClaimRequest("h1/0000:86:00.0", kind="mig", mig_profile="1g.10gb")
        )

    with store.read_session() as s:
        snap = build_snapshot(s)

    h1, h2 = snap.hosts
    assert (h1.name, h1.state, h2.state) == ("h1", HostState.UP, HostState.MAINTENANCE)
    # every placed VM holds its resources whatever its state; the unplaced one holds nothing
    assert (h1.used_vcpus, h1.used_memory_mib, h1.used_disk_gib) == (7, 11264, 30)
    assert (h2.used_vcpus, h2.used_memory_mib) == (1, 512)
    assert set(h1.vms) == {a.id, b.id, c.id} and h2.vms == (d.id,)
    assert h1.numa_cells == (NumaCell(0, 32, 131072), NumaCell(1, 32, 131072))
    assert h1.tags == frozenset({"gpu", "ssd"}) and h1.pool == "rack1" and h1.disk_gib == 2000
    assert h1.cpu_load == 0.25 and h2.cpu_load is None
    assert h2.devices == ()

    devs = {x.address: x for x in h1.devices}
    whole = devs["0000:3b:00.0"]
    assert whole.claimed_by == a.id and whole.kind == DeviceKind.GPU
    assert (whole.vendor_id, whole.product_id, whole.numa_node, whole.iommu_group) == (
        0x10DE,
        0x2330,
        0,
        12,
    )
    assert whole.utilization == 0.85
    vgpu = devs["0000:5e:00.0"]
    assert (vgpu.claimed_by, vgpu.active_mdev_type, vgpu.mdev_claims) == (None, "nvidia-471", 2)
    assert vgpu.mdev_types[0].display_name == "4C" and vgpu.mdev_types[0].max_instances == 10
    assert vgpu.utilization is None
    mig = devs["0000:86:00.0"]
    assert mig.health == DeviceHealth.TAINTED
    assert isinstance(mig.mig, MigSnap)
    # reported {3g, 1g} merged with claimed {3g, 1g}: no double counting
    assert sorted(mig.mig.instances) == ["1g.10gb", "3g.40gb"] and mig.mig.used_slices == 4
    fpga = devs["0000:af:00.1"]
    assert fpga.kind == DeviceKind.FPGA and fpga.is_vf and not whole.is_vf
    assert fpga.health == DeviceHealth.UNKNOWN

    vms = {v.name: v for v in snap.vms}
    assert vms["a"].devices == ("h1/0000:3b:00.0",) and not vms["a"].migratable
    assert vms["a"].ha and vms["a"].priority == 5 and vms["a"].running
    assert vms["a"].groups == ("db",)
    assert vms["b"].vgpu_type == "nvidia-471" and not vms["b"].running
    assert vms["d"].mig_profile == "3g.40gb" and vms["d"].running  # paused: QEMU alive
    assert vms["e"].host is None and vms["e"].mig_profile == "1g.10gb"
    assert not vms["c"].running

    groups = {g.name: g for g in snap.groups}
    assert groups["db"].members == frozenset({a.id, d.id}) and groups["db"].hard
    assert groups["empty"].members == frozenset() and not groups["empty"].hard

    # the placement view: the same hosts, usage, devices and groups; only group members as VMs
    with store.read_session() as s:
        view = build_snapshot(s, placement_only=True)
    assert view.groups == snap.groups
    assert [dataclasses.replace(h, vms=()) for h in snap.hosts] == list(view.hosts)
    assert {v.id for v in view.vms} == {a.id, d.id}
    assert [v for v in snap.vms if v.id in (a.id, d.id)] == list(view.vms)
    # placing a VM in no group: no group rule can concern it, so neither groups nor VMs
    with store.read_session() as s:
        bare = build_snapshot(s, placement_only=True, groups=False)
        full = build_snapshot(s, groups=False)  # only the placement view may leave them out
    assert bare.groups == () and bare.vms == ()
    assert bare.hosts == view.hosts
    assert full.groups == snap.groups and full.vms == snap.vms


def test_snapshot_vm_without_claims_is_migratable(store: Store) -> None:
    with store.session() as s:
        repo.add_host(s, Host(name="h1", uri="x", state="up", cpus=4, memory_mib=4096))
        repo.add_vm(s, VM(name="plain", host="h1", vcpus=1, memory_mib=1, state="migrating"))
    with store.read_session() as s:
        (vm,) = build_snapshot(s).vms
    assert vm.migratable and vm.running and vm.devices == () and vm.groups == ()


def test_placing_on_hosts_without_devices_reads_no_claims_or_device_load(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bare placement view (no groups, no VMs) of a cluster without devices skips the
    claim and device-load queries: they could only describe devices. Any other view reads them."""
    from vmmgr.state import snapshot_builder

    read: list[str] = []
    for name in ("_CLAIMS", "_DEVICE_UTIL"):
        real = getattr(snapshot_builder, name)
        monkeypatch.setattr(
            snapshot_builder, name, _Counting(real, lambda name=name: read.append(name))
        )
    with store.session() as s:
        repo.add_host(s, Host(name="h1", uri="x", state="up", cpus=4, memory_mib=4096))
    with store.read_session() as s:
        bare = build_snapshot(s, placement_only=True, groups=False)
        assert read == []
        assert build_snapshot(s, placement_only=True).hosts == bare.hosts
        assert read == ["_CLAIMS", "_DEVICE_UTIL"]


class _Counting:
    def __init__(self, real: object, seen: Callable[[], None]) -> None:
        self.real, self.seen = real, seen

    def rows(self, *args: object) -> object:
        self.seen()
        return self.real.rows(*args)  # type: ignore[attr-defined]



def _usage_rows(store: Store) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """host_usage as the triggers keep it, and the same sums counted from the VM rows."""
    from sqlalchemy import text

    with store.read_session() as s:
        conn = s.connection()
        kept = {
            str(h): (int(v), int(m), int(d))
            for h, v, m, d in conn.execute(text("SELECT * FROM host_usage"))
            if (v, m, d) != (0, 0, 0)
        }
        counted = {
            str(h): (int(v), int(m), int(d))
            for h, v, m, d in conn.execute(
                text(
                    "SELECT host, SUM(vcpus), SUM(memory_mib), SUM(disk_gib) FROM vm "
                    "WHERE host IS NOT NULL GROUP BY host"
                )
            )
        }
    return kept, counted


def test_host_usage_follows_every_vm_write(store: Store) -> None:
    """The triggers keep host_usage equal to the sums over the VM rows through adds, moves,
    resizes, unplacing, deletes and a raw SQL write; placement reads it."""
    from sqlalchemy import text

    with store.session() as s:
        for name in ("h1", "h2"):
            repo.add_host(s, Host(name=name, uri="x", state="up", cpus=64, memory_mib=65536))
        a = repo.add_vm(s, VM(name="a", host="h1", vcpus=2, memory_mib=1024, disk_gib=10))
        b = repo.add_vm(s, VM(name="b", host="h1", vcpus=4, memory_mib=2048, disk_gib=20))
        c = repo.add_vm(s, VM(name="c", host=None, vcpus=8, memory_mib=4096))
    steps = [
        lambda s: None,
        lambda s: repo.update_vm(s, a.id, {"host": "h2"}),  # a move
        lambda s: repo.update_vm(s, b.id, {"vcpus": 6, "memory_mib": 3072}),  # a resize
        lambda s: repo.update_vm(s, c.id, {"host": "h2", "disk_gib": 5}),  # placed and grown
        lambda s: repo.update_vm(s, a.id, {"host": None}),  # unplaced
        lambda s: repo.update_vm(s, b.id, {"state": "running"}),  # not a usage change
        lambda s: repo.delete_vm(s, b.id, force=True),
        lambda s: s.connection().execute(text("UPDATE vm SET vcpus = vcpus + 1")),  # raw SQL
    ]
    seen = []
    for step in steps:
        with store.session() as s:
            step(s)
        kept, counted = _usage_rows(store)
        assert kept == counted
        seen.append(kept)
    assert seen[0] == {"h1": (6, 3072, 30)}
    assert seen[1] == {"h1": (4, 2048, 20), "h2": (2, 1024, 10)}
    assert seen[-1] == {"h2": (9, 4096, 5)}
    with store.read_session() as s:
        snap = build_snapshot(s, placement_only=True)
    used = {h.name: (h.used_vcpus, h.used_memory_mib, h.used_disk_gib) for h in snap.hosts}
    assert used == {"h1": (0, 0, 0), "h2": (9, 4096, 5)}
