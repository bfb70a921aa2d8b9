"""Lab tier: two hosts loaded unevenly; the balance policy live-migrates VMs and the score
drops (the one scorer of policies.score)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.lab import Lab
from tests.harness import Daemon, running_daemon, test_config
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, policy_pb2, policy_pb2_grpc, vm_pb2

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


def test_balancer_moves_vms_and_the_score_drops(daemon: Daemon) -> None:
    d = daemon
    ids = []
    for n in range(3):
        op = d.wait(
            d.vms.CreateVM(
                vm_pb2.CreateVMRequest(
                    spec=vm_pb2.VMSpec(
                        name=f"load-{n}",
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
        ids.append(op.result["vm_id"])
    try:
        policies = policy_pb2_grpc.PolicyServiceStub(d.channel)
        before = policies.PlanPolicy(policy_pb2.PlanPolicyRequest(name="balance"))
        assert before.score_before > 0
        for _ in range(4):  # the imbalance must persist a few rounds (hysteresis) first
            done = d.wait(
                policies.RunPolicy(policy_pb2.RunPolicyRequest(name="balance")).operation,
                timeout=300,
            )
            assert done.state == SUCCEEDED, done.error
            if int(done.result.get("actions", "0")):
                break
        hosts = [d.vms.GetVM(vm_pb2.GetVMRequest(vm=i)).vm.host for i in ids]
        assert "h1" in hosts, hosts
        states = [d.vms.GetVM(vm_pb2.GetVMRequest(vm=i)).vm.state for i in ids]
        assert states == [vm_pb2.VM_STATE_RUNNING] * 3
        after = policies.PlanPolicy(policy_pb2.PlanPolicyRequest(name="balance"))
        assert after.score_before < before.score_before
    finally:
        for i in ids:
            d.wait(d.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=i)).operation, timeout=120)
