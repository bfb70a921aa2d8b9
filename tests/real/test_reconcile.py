"""Real tier: observed state follows libvirt events, and a restarted daemon cleans up a create
it was killed in the middle of."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import remove_pools, running_daemon, test_config
from vmmgr.state import repo
from vmmgr.state.models import Operation
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

URI = "qemu:///system"
TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(autouse=True)
def _needs_libvirtd() -> None:
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("libvirtd is not reachable at qemu:///system")
        pytest.skip("libvirtd is not reachable")
    if not TINY.exists():
        pytest.skip(f"tiny image missing: {TINY}")


def test_events_update_state_and_restart_undoes_interrupted_create(tmp_path: Path) -> None:
    cfg = test_config(tmp_path)
    try:
        with running_daemon(cfg) as d:
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="local", uri=URI))
            op = d.images.ImportImage(
                image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
            ).operation
            assert d.wait(op).state == operation_pb2.OPERATION_STATE_SUCCEEDED
            spec = vm_pb2.VMSpec(
                name="evt",
                vcpus=1,
                memory_mib=128,
                domain_type="qemu",
                disks=[vm_pb2.DiskSpec(image="tiny")],
            )
            op = d.wait(d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec)).operation)
            vm_id = op.result["vm_id"]

            virsh("destroy", vm_id)  # behind vmmgr's back: the lifecycle event tells it
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                vm = d.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
                if vm.state == vm_pb2.VM_STATE_STOPPED:
                    break
                time.sleep(0.2)
            assert vm.state == vm_pb2.VM_STATE_STOPPED

            # Pretend the daemon died after starting the domain but before committing.
            d.vms.StartVM(vm_pb2.StartVMRequest(vm=vm_id))
            with d.core.store.session() as s:
                row = s.get(Operation, op.id)
                assert row is not None
                row.state, row.finished_at = "running", None
                repo.update_vm(s, vm_id, {"state": "creating"})

        with running_daemon(cfg) as d2:  # same store, same libvirtd: start-up reconciles
            assert vm_id not in virsh("list", "--all", "--uuid")
            assert vm_id not in virsh("vol-list", cfg.vm_pool)
            assert not d2.vms.ListVMs(vm_pb2.ListVMsRequest()).vms
            after = d2.ops.GetOperation(operation_pb2.GetOperationRequest(id=op.id)).operation
            assert after.state == operation_pb2.OPERATION_STATE_FAILED
            assert "restarted" in after.error.message
    finally:
        remove_pools(URI, cfg, "evt")
