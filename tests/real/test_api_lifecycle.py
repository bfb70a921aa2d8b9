"""Real tier: the whole VM lifecycle through the gRPC API on this machine's libvirtd + qemu."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from drivers.hypervisor.libvirt.connection import LibvirtConnection
from tests.harness import Daemon, remove_pools, running_daemon, test_config
from vmmgr.v1 import event_pb2, host_pb2, image_pb2, operation_pb2, vm_pb2

URI = "qemu:///system"
TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("libvirtd is not reachable at qemu:///system")
        pytest.skip("libvirtd is not reachable at qemu:///system")
    if not TINY.exists():
        pytest.skip(f"tiny image missing: {TINY} (make image)")
    cfg = test_config(tmp_path_factory.mktemp("real"))
    try:
        with running_daemon(cfg) as d:
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="local", uri=URI))
            op = d.images.ImportImage(
                image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
            ).operation
            assert d.wait(op).state == operation_pb2.OPERATION_STATE_SUCCEEDED
            yield d
    finally:
        remove_pools(URI, cfg, "real-life")


def create(d: Daemon, name: str, **kw: object) -> operation_pb2.Operation:
    spec = vm_pb2.VMSpec(
        name=name,
        vcpus=1,
        memory_mib=128,
        domain_type="qemu",
        disks=[vm_pb2.DiskSpec(image="tiny")],
        **kw,
    )  # type: ignore[arg-type]
    return d.wait(d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec)).operation)


def test_create_runs_with_overlay_then_delete_removes_everything(daemon: Daemon) -> None:
    op = create(daemon, "real-life")
    assert op.state == operation_pb2.OPERATION_STATE_SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    assert "real-life" in virsh("list", "--name").split()
    xml = virsh("dumpxml", vm_id)
    vols = virsh("vol-list", daemon.config.vm_pool)
    assert f"{vm_id}-disk0.qcow2" in vols and f"{vm_id}-seed.iso" in vols
    assert f"{daemon.config.vm_pool_path}/{vm_id}-disk0.qcow2" in xml
    assert "https://vmmgr.dev/xmlns/domain/1" in xml

    vm = daemon.vms.GetVM(vm_pb2.GetVMRequest(vm="real-life")).vm
    assert vm.state == vm_pb2.VM_STATE_RUNNING and vm.host == "local"

    vm = daemon.vms.SuspendVM(vm_pb2.SuspendVMRequest(vm="real-life")).vm
    assert vm.state == vm_pb2.VM_STATE_PAUSED
    assert "paused" in virsh("domstate", vm_id)
    vm = daemon.vms.ResumeVM(vm_pb2.ResumeVMRequest(vm="real-life")).vm
    assert vm.state == vm_pb2.VM_STATE_RUNNING

    # the tiny guest ignores ACPI power-off: graceful times out, then force-off
    stop = daemon.vms.StopVM(vm_pb2.StopVMRequest(vm="real-life", timeout_seconds=1))
    assert stop.forced and stop.vm.state == vm_pb2.VM_STATE_STOPPED
    assert "shut off" in virsh("domstate", vm_id)
    # qemu tells of the kill as a finished shutdown and then as stopped; however late they are
    # handled, the VM ends stopped, and so does the last state change told of it
    conn = daemon.core.conns.get("local")
    assert isinstance(conn, LibvirtConnection) and conn.drain_events()
    vm = daemon.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
    assert vm.state == vm_pb2.VM_STATE_STOPPED
    told = daemon.events.ListEvents(
        event_pb2.ListEventsRequest(kinds=["vm.state"], resource=vm_id)
    ).events
    assert not told or told[-1].attributes["state"] == "stopped", [e.message for e in told]
    vm = daemon.vms.StartVM(vm_pb2.StartVMRequest(vm=vm_id)).vm
    assert vm.state == vm_pb2.VM_STATE_RUNNING

    done = daemon.wait(daemon.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm="real-life")).operation)
    assert done.state == operation_pb2.OPERATION_STATE_SUCCEEDED, done.error
    assert vm_id not in virsh("list", "--all", "--uuid")
    assert vm_id not in virsh("vol-list", daemon.config.vm_pool)
    with pytest.raises(grpc.RpcError) as err:
        daemon.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_foreign_domains_are_reported_and_untouched(daemon: Daemon, tmp_path: Path) -> None:
    xml = tmp_path / "foreign.xml"
    xml.write_text(
        "<domain type='qemu'><name>foreign-one</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    virsh("define", str(xml))
    try:
        doms = daemon.hosts.ListForeignDomains(host_pb2.ListForeignDomainsRequest(host="local"))
        assert "foreign-one" in [d.name for d in doms.domains]
        vms = daemon.vms.ListVMs(vm_pb2.ListVMsRequest()).vms
        assert "foreign-one" not in [v.spec.name for v in vms]
        daemon.core.resync()  # reconciling never touches it
        assert "foreign-one" in virsh("list", "--all", "--name").split()
    finally:
        virsh("undefine", "foreign-one")
