"""Lab tier through the gRPC API: vmmgrd manages two real libvirt hosts; a VM created by vmmgr
live-migrates between them and keeps its heartbeat; maintenance evacuates and moves it back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from drivers.lab import Lab
from drivers.lab.heartbeat import HeartbeatReader
from tests.harness import Daemon, running_daemon, test_config
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED
TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    cfg = test_config(tmp_path, migration_unsafe=True, default_domain_type="qemu")
    with running_daemon(cfg) as d:
        for i, h in enumerate(lab.hosts):
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name=f"h{i}", uri=h.uri))
        op = d.images.ImportImage(
            image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
        ).operation
        assert d.wait(op).state == SUCCEEDED
        yield d


def heartbeat(lab: Lab, host: int, vm_id: str) -> HeartbeatReader:
    conn = libvirt.open(lab.hosts[host].uri)
    return HeartbeatReader(conn.lookupByUUIDString(vm_id)).start()


def where(d: Daemon, vm_id: str) -> tuple[str, int]:
    vm = d.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
    return vm.host, vm.state


def test_live_migration_maintenance_and_move_back(lab: Lab, daemon: Daemon) -> None:
    d = daemon
    op = d.wait(
        d.vms.CreateVM(
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name="mover",
                    vcpus=1,
                    memory_mib=128,
                    host="h0",
                    disks=[vm_pb2.DiskSpec(image="tiny")],
                )
            )
        ).operation,
        timeout=180,
    )
    assert op.state == SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    try:
        hb = heartbeat(lab, 0, vm_id)
        before = hb.wait_for(2, timeout_s=120)
        hb.stop()
        verdict = d.vms.GetMigratability(vm_pb2.GetMigratabilityRequest(vm=vm_id))
        assert verdict.mode == vm_pb2.MIGRATION_MODE_LIVE

        op = d.wait(
            d.vms.MigrateVM(vm_pb2.MigrateVMRequest(vm=vm_id, target_host="h1")).operation,
            timeout=180,
        )
        assert op.state == SUCCEEDED, op.error
        assert op.result["target"] == "h1" and int(op.result["downtime_ms"]) >= 0
        assert where(d, vm_id) == ("h1", vm_pb2.VM_STATE_RUNNING)
        hb = heartbeat(lab, 1, vm_id)
        assert hb.wait_for(before + 1, timeout_s=60) > before  # the same guest, still counting
        hb.stop()

        plan = d.hosts.EnterMaintenance(host_pb2.EnterMaintenanceRequest(name="h1", dry_run=True))
        assert [(s.vm_id, s.action, s.target_host) for s in plan.plan] == [(vm_id, "live", "h0")]
        assert not plan.operation.id
        resp = d.hosts.EnterMaintenance(host_pb2.EnterMaintenanceRequest(name="h1"))
        assert d.wait(resp.operation, timeout=180).state == SUCCEEDED
        assert where(d, vm_id) == ("h0", vm_pb2.VM_STATE_RUNNING)
        h1 = d.hosts.GetHost(host_pb2.GetHostRequest(name="h1")).host
        assert h1.state == host_pb2.HOST_STATE_MAINTENANCE

        back = d.hosts.ExitMaintenance(host_pb2.ExitMaintenanceRequest(name="h1", move_back=True))
        assert back.host.state == host_pb2.HOST_STATE_UP
        assert d.wait(back.operation, timeout=180).state == SUCCEEDED
        assert where(d, vm_id) == ("h1", vm_pb2.VM_STATE_RUNNING)
    finally:
        done = d.wait(d.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation, timeout=120)
        assert done.state == SUCCEEDED, done.error
