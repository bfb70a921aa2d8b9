"""Real tier: an HA VM whose qemu dies is started again on its host after the backoff."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import remove_pools, running_daemon, test_config
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

URI = "qemu:///system"
TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


def qemu_pid(vm_id: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"uuid {vm_id}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, f"no qemu process for {vm_id}"
    return pids[0]


def test_ha_vm_is_restarted_after_its_qemu_dies(tmp_path: Path) -> None:
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        pytest.skip("libvirtd is not reachable")
    cfg = test_config(tmp_path, crash_backoff_s=0.5)
    try:
        with running_daemon(cfg) as d:
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="local", uri=URI))
            d.wait(
                d.images.ImportImage(
                    image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
                ).operation
            )
            op = d.wait(
                d.vms.CreateVM(
                    vm_pb2.CreateVMRequest(
                        spec=vm_pb2.VMSpec(
                            name="crashy",
                            vcpus=1,
                            memory_mib=128,
                            domain_type="qemu",
                            ha=True,
                            disks=[vm_pb2.DiskSpec(image="tiny")],
                        )
                    )
                ).operation
            )
            assert op.state == operation_pb2.OPERATION_STATE_SUCCEEDED, op.error
            vm_id = op.result["vm_id"]
            first = qemu_pid(vm_id)
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 30
            restarted = False
            while time.monotonic() < deadline and not restarted:
                time.sleep(0.3)
                out = subprocess.run(
                    ["pgrep", "-f", f"uuid {vm_id}"], capture_output=True, text=True
                ).stdout.split()
                restarted = bool(out) and int(out[0]) != first
            assert restarted, "the HA VM was not restarted after its qemu died"
            deadline = time.monotonic() + 10  # start() returns a moment after qemu appears
            while time.monotonic() < deadline and not d.events_list("vm.restarted"):
                time.sleep(0.2)
            assert [e.kind for e in d.events_list("vm.restarted")] == ["vm.restarted"]
            vm = d.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
            assert vm.state == vm_pb2.VM_STATE_RUNNING
            d.wait(d.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation)
    finally:
        remove_pools(URI, cfg, "crashy")
