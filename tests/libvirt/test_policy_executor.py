"""The shared policy executor on the test driver: every action kind a planner can emit runs
through one Operation (moves need real hosts: the lab tier covers them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.executor import ServiceExecutor
from policies.plan import Fence, Plan, PowerOff, RemoveVM, StartVM
from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from vmmgr.errors import FailedPrecondition
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, vm_pb2

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(test_config(tmp_path)) as d:
        for name in ("p1", "p2"):
            node = tmp_path / f"{name}.xml"
            node.write_text(TEST_NODE_XML)
            d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name=name, uri=f"test://{node}"))
        op = d.images.ImportImage(
            image_pb2.ImportImageRequest(
                name="base", source_path=str(make_qcow2(tmp_path / "b.qcow2"))
            )
        ).operation
        assert d.wait(op).state == SUCCEEDED
        yield d


def vm_on(d: Daemon, name: str, host: str) -> str:
    op = d.wait(
        d.vms.CreateVM(
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name=name,
                    vcpus=1,
                    memory_mib=256,
                    host=host,
                    disks=[vm_pb2.DiskSpec(image="base")],
                )
            )
        ).operation
    )
    assert op.state == SUCCEEDED, op.error
    return op.result["vm_id"]


def test_restart_remove_fence_and_power_off(daemon: Daemon, tmp_path: Path) -> None:
    core = daemon.core
    fenced: list[str] = []
    ex = ServiceExecutor(
        core.store,
        core.ops,
        core.vms,
        core.migrations,
        fence=fenced.append,
        power_off=lambda h: fenced.append(f"off:{h}"),
    )
    ha = vm_on(daemon, "ha-1", "p1")
    gone = vm_on(daemon, "gone", "p2")

    ex.execute(Plan("recover", ((Fence("p1"),), (StartVM(ha, "p2"), RemoveVM(gone))), "test"))
    assert fenced == ["p1"]
    vm = daemon.vms.GetVM(vm_pb2.GetVMRequest(vm=ha)).vm
    assert (vm.host, vm.state) == ("p2", vm_pb2.VM_STATE_RUNNING)
    assert ha in [d.vm_id for d in core.conns.get("p2").list_domains()]
    names = [v.spec.name for v in daemon.vms.ListVMs(vm_pb2.ListVMsRequest()).vms]
    assert names == ["ha-1"]
    ops = core.ops.list_ops(kind="policy.recover")
    assert [(o.state, o.result["actions"]) for o in ops] == [("succeeded", "3")]

    ex.execute(Plan("power", ((PowerOff("p1"),),), "test"))
    assert fenced == ["p1", "off:p1"]


def test_missing_hook_fails_the_plan_and_says_why(daemon: Daemon) -> None:
    core = daemon.core
    ex = ServiceExecutor(core.store, core.ops, core.vms, core.migrations)
    with pytest.raises(FailedPrecondition) as err:
        ex.execute(Plan("recover", ((Fence("p1"),),), "test"))
    assert "fence" in str(err.value)
