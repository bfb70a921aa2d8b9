"""Lab tier: an HA VM survives the death of its host, exactly once. The disk lock refuses a
second start while the first qemu holds it; after the host dies (and is fenced) the recover
policy restarts the VM on the other host."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from drivers.lab import Lab
from tests.harness import Daemon, running_daemon, test_config
from vmmgr.errors import VmmgrError
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, policy_pb2, policy_pb2_grpc, vm_pb2

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED
TINY = Path(os.environ.get("VMMGR_TINY_IMAGE", "images/build/tiny.qcow2")).resolve()


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    cfg = test_config(
        tmp_path,
        migration_unsafe=True,
        default_domain_type="qemu",
        recover_heartbeat_timeout_s=1.0,
        recover_grace_s=2.0,
        fence_command=["true", "{host}"],
        fence_max_share=0.5,
        keepalive_interval_s=1,
        keepalive_count=2,
    )
    with running_daemon(cfg) as d:
        for i, h in enumerate(lab.hosts):
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name=f"h{i}", uri=h.uri))
        op = d.images.ImportImage(
            image_pb2.ImportImageRequest(name="tiny", source_path=str(TINY))
        ).operation
        assert d.wait(op).state == SUCCEEDED
        yield d


def running_on(lab: Lab, i: int, vm_id: str) -> bool:
    try:
        conn = libvirt.open(lab.hosts[i].uri)
    except libvirt.libvirtError:
        return False
    try:
        return bool(conn.lookupByUUIDString(vm_id).isActive())
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def test_ha_vm_restarts_elsewhere_exactly_once(
    lab: Lab, daemon: Daemon, revive: Callable[[int], None]
) -> None:
    d = daemon
    op = d.wait(
        d.vms.CreateVM(
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name="ha-vm",
                    vcpus=1,
                    memory_mib=128,
                    host="h0",
                    ha=True,
                    disks=[vm_pb2.DiskSpec(image="tiny")],
                )
            )
        ).operation,
        timeout=180,
    )
    assert op.state == SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    try:
        check_restart(lab, d, vm_id, revive)
    finally:
        done = d.wait(d.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation, timeout=120)
        assert done.state == SUCCEEDED, done.error


def check_restart(lab: Lab, d: Daemon, vm_id: str, revive: Callable[[int], None]) -> None:
    # the lock side: while the qemu on h0 holds the disk, h1 may not start it too
    with pytest.raises(VmmgrError):
        d.core.vms.restart_on(vm_id, "h1")
    assert running_on(lab, 0, vm_id) and not running_on(lab, 1, vm_id)

    policies = policy_pb2_grpc.PolicyServiceStub(d.channel)
    policies.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(name="recover", enabled=True, interval_seconds=1)
    )
    revive(0)
    killed = time.monotonic()
    lab.kill_host(0)
    deadline = killed + 90
    while time.monotonic() < deadline:
        vm = d.vms.GetVM(vm_pb2.GetVMRequest(vm=vm_id)).vm
        if vm.host == "h1" and vm.state == vm_pb2.VM_STATE_RUNNING:
            break
        time.sleep(0.5)
    took = time.monotonic() - killed
    assert vm.host == "h1" and vm.state == vm_pb2.VM_STATE_RUNNING, vm
    assert running_on(lab, 1, vm_id) and not running_on(lab, 0, vm_id)
    print(f"HA restart {took:.1f}s after the kill (grace 2 s, heartbeat timeout 1 s)")
    ops = d.core.ops.list_ops(kind="policy.recover")
    assert ops and ops[0].state == "succeeded"
