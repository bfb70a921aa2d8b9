"""Fast tier: the VM API on libvirt's test driver (a private in-memory host per test)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from drivers.hypervisor.libvirt.seed import scratch_root
from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from vmmgr.errors import DriverError
from vmmgr.ports import (
    DomainEvent,
    DomainState,
    HostConnection,
    Hypervisor,
    PendingFile,
    VolumeInfo,
)
from vmmgr.state import repo
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED
FAILED = operation_pb2.OPERATION_STATE_FAILED


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML)
    image = make_qcow2(tmp_path / "base.qcow2")
    with running_daemon(test_config(tmp_path)) as d:
        d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="t1", uri=f"test://{node}"))
        op = d.images.ImportImage(
            image_pb2.ImportImageRequest(name="base", source_path=str(image))
        ).operation
        assert d.wait(op).state == SUCCEEDED
        yield d


def spec(name: str = "vm1", **kw: object) -> vm_pb2.VMSpec:
    fields: dict[str, object] = {"vcpus": 1, "memory_mib": 256, **kw}
    return vm_pb2.VMSpec(name=name, disks=[vm_pb2.DiskSpec(image="base")], **fields)  # type: ignore[arg-type]


def create(d: Daemon, s: vm_pb2.VMSpec) -> operation_pb2.Operation:
    return d.wait(d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=s)).operation)


def host_side(d: Daemon) -> tuple[list[str], list[str]]:
    conn = d.core.conns.get("t1")
    doms = [x.name for x in conn.list_domains()]
    vols = [v.name for v in conn.list_volumes(d.config.vm_pool)]
    return doms, vols


def rows(d: Daemon) -> tuple[int, int]:
    with d.core.store.read_session() as s:
        return repo.count_vms(s), len(repo.list_volumes(s))


def test_create_get_list_lifecycle_delete(daemon: Daemon) -> None:
    op = create(daemon, spec(labels={"team": "ml"}))
    assert op.state == SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    vm = daemon.vms.GetVM(vm_pb2.GetVMRequest(vm="vm1")).vm
    assert (vm.id, vm.host, vm.state) == (vm_id, "t1", vm_pb2.VM_STATE_RUNNING)
    assert len(vm.volumes) == 2
    listed = daemon.vms.ListVMs(vm_pb2.ListVMsRequest(label_selector=["team=ml"])).vms
    assert [v.id for v in listed] == [vm_id]
    assert not daemon.vms.ListVMs(vm_pb2.ListVMsRequest(label_selector=["team=web"])).vms

    assert (
        daemon.vms.SuspendVM(vm_pb2.SuspendVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_PAUSED
    )
    assert daemon.vms.ResumeVM(vm_pb2.ResumeVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_RUNNING
    assert daemon.vms.RebootVM(vm_pb2.RebootVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_RUNNING
    stopped = daemon.vms.StopVM(vm_pb2.StopVMRequest(vm=vm_id, timeout_seconds=2))
    assert stopped.vm.state == vm_pb2.VM_STATE_STOPPED
    assert daemon.vms.StartVM(vm_pb2.StartVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_RUNNING

    done = daemon.wait(daemon.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation)
    assert done.state == SUCCEEDED, done.error
    assert host_side(daemon) == ([], [])
    assert rows(daemon) == (0, 0)


def test_a_late_event_of_the_create_does_not_undo_its_outcome(daemon: Daemon) -> None:
    """libvirt's DEFINED event (state: stopped) can reach the service after the create has
    recorded the VM running; an event observed after the create ended still counts."""
    before = time.monotonic()
    op = create(daemon, spec())
    vm_id = op.result["vm_id"]

    def event(observed: float) -> DomainEvent:
        return DomainEvent(
            host="t1",
            uuid=vm_id,
            name="vm1",
            vm_id=vm_id,
            state=DomainState.STOPPED,
            reason="defined",
            observed=observed,
        )

    daemon.core.vms.on_domain_event(event(before))
    assert daemon.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_RUNNING
    daemon.core.vms.on_domain_event(event(time.monotonic()))
    assert daemon.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm.state == vm_pb2.VM_STATE_STOPPED


class _SeedElsewhere:
    """Hosts whose pool puts the seed ISO somewhere other than beside the overlays (pool types
    name volume paths their own way): the domain and the volume's row use the real path."""

    def __init__(self, inner: Hypervisor, where: str) -> None:
        self.inner, self.where = inner, where

    def connect(self, uri: str, *, host_name: str) -> HostConnection:
        conn = self.inner.connect(uri, host_name=host_name)
        real_create = conn.create_raw_volume

        def create_raw_volume(pool: str, name: str, capacity_bytes: int) -> VolumeInfo:
            vol = real_create(pool, name, capacity_bytes)
            return dataclasses.replace(vol, path=f"{self.where}/{name}")

        conn.create_raw_volume = create_raw_volume  # type: ignore[method-assign]
        return conn

    def build_seed(self, meta_data: str, user_data: str, network_config: str) -> PendingFile:
        return self.inner.build_seed(meta_data, user_data, network_config)


def test_a_seed_volume_not_beside_the_overlays_is_what_the_domain_uses(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML)
    image = make_qcow2(tmp_path / "base.qcow2")
    where = "/srv/elsewhere"
    with running_daemon(test_config(tmp_path), wrap=lambda hv: _SeedElsewhere(hv, where)) as d:
        d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="t1", uri=f"test://{node}"))
        imported = d.images.ImportImage(
            image_pb2.ImportImageRequest(name="base", source_path=str(image))
        ).operation
        assert d.wait(imported).state == SUCCEEDED
        op = create(d, spec())
        assert op.state == SUCCEEDED, op.error
        vm_id = op.result["vm_id"]
        xml = d.core.conns.get("t1").domain_xml(vm_id)
        with d.core.store.read_session() as s:
            paths = {v.name: v.path for v in repo.list_volumes(s)}
    seed = f"{vm_id}-seed.iso"
    assert f"<source file='{where}/{seed}'" in xml.replace('"', "'")
    assert paths[seed] == f"{where}/{seed}"
    assert paths[f"{vm_id}-disk0.qcow2"].startswith(d.config.vm_pool_path)


def test_a_known_image_replica_is_only_looked_up_and_one_gone_is_imported_again(
    daemon: Daemon,
) -> None:
    conn = daemon.core.conns.get("t1")
    pool = daemon.config.image_pool
    assert create(daemon, spec("vm1")).state == SUCCEEDED  # the replica is known now
    read: list[str] = []
    real_get = conn.get_volume
    conn.get_volume = lambda p, n: read.append(n) or real_get(p, n)  # type: ignore[method-assign]
    assert create(daemon, spec("vm2")).state == SUCCEEDED
    assert read == []  # images do not change: a look-up, no volume XML read
    conn.delete_volume(pool, "base.qcow2")  # behind vmmgr's back
    assert create(daemon, spec("vm3")).state == SUCCEEDED
    assert "base.qcow2" in [v.name for v in conn.list_volumes(pool)]
    assert create(daemon, spec("vm4")).state == SUCCEEDED


def test_create_without_start_leaves_it_stopped(daemon: Daemon) -> None:
    op = create(daemon, spec(start=False))
    assert op.result["vm_state"] == "stopped"
    vm = daemon.vms.GetVM(vm_pb2.GetVMRequest(vm="vm1")).vm
    assert vm.state == vm_pb2.VM_STATE_STOPPED


@pytest.mark.parametrize("step", ["overlay", "seed", "define", "upload", "start", "commit"])
def test_failure_at_any_create_step_leaves_nothing(daemon: Daemon, step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            raise DriverError(f"injected failure at {step}")

    daemon.core.vms.step_hook = hook
    seeds = set(Path(scratch_root()).glob("vmmgr-seed-*"))
    op = create(daemon, spec())
    assert op.state == FAILED and f"injected failure at {step}" in op.error.message
    assert host_side(daemon) == ([], [])
    assert rows(daemon) == (0, 0)
    # the ISO's scratch files go right after the end is announced, off the waiter's time
    deadline = time.monotonic() + 5
    while set(Path(scratch_root()).glob("vmmgr-seed-*")) - seeds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(Path(scratch_root()).glob("vmmgr-seed-*")) - seeds
    daemon.core.vms.step_hook = lambda name: None
    assert create(daemon, spec()).state == SUCCEEDED  # and the name is free again


def test_cancel_before_build_undoes(daemon: Daemon) -> None:
    import threading

    gate = threading.Event()
    daemon.core.vms.step_hook = lambda name: gate.wait(10) if name == "seed" else None
    op = daemon.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec())).operation
    from vmmgr.v1 import operation_pb2 as o

    daemon.ops.CancelOperation(o.CancelOperationRequest(id=op.id))
    gate.set()
    done = daemon.wait(op)
    assert done.state == operation_pb2.OPERATION_STATE_CANCELLED
    assert host_side(daemon) == ([], []) and rows(daemon) == (0, 0)


def code_of(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)  # type: ignore[operator]
    return err.value.code(), err.value.details()


def test_bad_create_requests_name_the_field_and_change_nothing(daemon: Daemon) -> None:
    cases = [
        (spec(name="Bad_Name"), grpc.StatusCode.INVALID_ARGUMENT, "spec.name"),
        (spec(name="</name><devices>"), grpc.StatusCode.INVALID_ARGUMENT, "spec.name"),
        (
            vm_pb2.VMSpec(name="x", vcpus=0, memory_mib=256, disks=[vm_pb2.DiskSpec(image="base")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.vcpus",
        ),
        (
            vm_pb2.VMSpec(name="x", vcpus=1, memory_mib=256),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.disks",
        ),
        (
            vm_pb2.VMSpec(name="x", vcpus=1, memory_mib=256, disks=[vm_pb2.DiskSpec(image="nope")]),
            grpc.StatusCode.NOT_FOUND,
            "spec.disks[0].image",
        ),
        (spec(vcpus=1000), grpc.StatusCode.INVALID_ARGUMENT, "spec.vcpus"),
        (
            vm_pb2.VMSpec(
                name="big", vcpus=1, memory_mib=1024 * 1024, disks=[vm_pb2.DiskSpec(image="base")]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "memory",
        ),
    ]
    for s, code, text in cases:
        got, details = code_of(daemon.vms.CreateVM, vm_pb2.CreateVMRequest(spec=s))
        assert got == code and text in details, (s, got, details)
    assert host_side(daemon) == ([], []) and rows(daemon) == (0, 0)
    got, _ = code_of(daemon.vms.CreateVM, vm_pb2.CreateVMRequest())
    assert got == grpc.StatusCode.INVALID_ARGUMENT


def test_duplicate_name_is_already_exists(daemon: Daemon) -> None:
    assert create(daemon, spec()).state == SUCCEEDED
    got, details = code_of(daemon.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec()))
    assert got == grpc.StatusCode.ALREADY_EXISTS and "spec.name" in details


def test_request_id_makes_create_idempotent(daemon: Daemon) -> None:
    req = vm_pb2.CreateVMRequest(spec=spec(), request_id="retry-1")
    first = daemon.vms.CreateVM(req).operation
    second = daemon.vms.CreateVM(req).operation
    assert first.id == second.id
    assert daemon.wait(first).state == SUCCEEDED


def test_lifecycle_errors(daemon: Daemon) -> None:
    assert (
        code_of(daemon.vms.GetVM, vm_pb2.GetVMRequest(vm="ghost"))[0] == grpc.StatusCode.NOT_FOUND
    )
    assert code_of(daemon.vms.GetVM, vm_pb2.GetVMRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT
    create(daemon, spec())
    assert (
        code_of(daemon.vms.ResumeVM, vm_pb2.ResumeVMRequest(vm="vm1"))[0]
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code_of(daemon.vms.StopVM, vm_pb2.StopVMRequest(vm="vm1", timeout_seconds=-1))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(daemon.vms.ListVMs, vm_pb2.ListVMsRequest(page_size=5000))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(daemon.vms.ListVMs, vm_pb2.ListVMsRequest(page_token="!!"))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(daemon.vms.ListVMs, vm_pb2.ListVMsRequest(label_selector=["x"]))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_list_pages(daemon: Daemon) -> None:
    for i in range(5):
        assert create(daemon, spec(name=f"p{i}", start=False)).state == SUCCEEDED
    names, token = [], ""
    while True:
        resp = daemon.vms.ListVMs(vm_pb2.ListVMsRequest(page_size=2, page_token=token))
        names += [v.spec.name for v in resp.vms]
        token = resp.next_page_token
        if not token:
            break
    assert names == [f"p{i}" for i in range(5)]


def test_explain_shows_ranking_and_rejections(daemon: Daemon) -> None:
    ok = daemon.vms.ExplainPlacement(vm_pb2.ExplainPlacementRequest(spec=spec()))
    assert ok.chosen_host == "t1" and ok.hosts_considered == 1
    too_big = daemon.vms.ExplainPlacement(
        vm_pb2.ExplainPlacementRequest(spec=spec(memory_mib=1024 * 1024))
    )
    assert too_big.chosen_host == "" and sum(r.hosts_rejected for r in too_big.rejections) == 1
    assert rows(daemon) == (0, 0)


def test_host_registration_errors(daemon: Daemon, tmp_path: Path) -> None:
    h = daemon.hosts
    assert (
        code_of(h.RegisterHost, host_pb2.RegisterHostRequest(name="x", uri="http://x"))[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            h.RegisterHost, host_pb2.RegisterHostRequest(name="Bad Name", uri="test:///default")
        )[0]
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(
            h.RegisterHost,
            host_pb2.RegisterHostRequest(name="gone", uri="qemu+tcp://127.0.0.1:1/system"),
        )[0]
        == grpc.StatusCode.UNAVAILABLE
    )
    assert (
        code_of(h.RegisterHost, host_pb2.RegisterHostRequest(name="t1", uri="test:///default"))[0]
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert [x.name for x in h.ListHosts(host_pb2.ListHostsRequest()).hosts] == ["t1"]
    create(daemon, spec())
    assert (
        code_of(h.RemoveHost, host_pb2.RemoveHostRequest(name="t1"))[0]
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    host = h.GetHost(host_pb2.GetHostRequest(name="t1")).host
    assert (host.cpus, host.vm_count, host.used_vcpus) == (8, 1, 1)


def test_anti_affinity_group_is_enforced(daemon: Daemon) -> None:
    daemon.vms.CreatePlacementGroup(
        vm_pb2.CreatePlacementGroupRequest(
            group=vm_pb2.PlacementGroup(name="spread", policy="anti-affinity", hard=True)
        )
    )
    assert create(daemon, spec(name="a", groups=["spread"])).state == SUCCEEDED
    got, details = code_of(
        daemon.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec(name="b", groups=["spread"]))
    )
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "affinity" in details
    got, details = code_of(
        daemon.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec(name="c", groups=["nope"]))
    )
    assert got == grpc.StatusCode.NOT_FOUND and "spec.groups[0]" in details
    groups = daemon.vms.ListPlacementGroups(vm_pb2.ListPlacementGroupsRequest()).groups
    assert [(g.name, len(g.members)) for g in groups] == [("spread", 1)]
    got, _ = code_of(
        daemon.vms.DeletePlacementGroup, vm_pb2.DeletePlacementGroupRequest(name="spread")
    )
    assert got == grpc.StatusCode.FAILED_PRECONDITION
    got, details = code_of(
        daemon.vms.CreatePlacementGroup,
        vm_pb2.CreatePlacementGroupRequest(
            group=vm_pb2.PlacementGroup(name="x", policy="sideways")
        ),
    )
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "group.policy" in details
