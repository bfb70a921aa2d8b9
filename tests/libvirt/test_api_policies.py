"""PolicyService through the API on the test driver: settings, dry runs, a real run, and an
elastic scaling group that grows to its minimum through the shared executor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from vmmgr.v1 import host_pb2, image_pb2, operation_pb2, policy_pb2, policy_pb2_grpc, vm_pb2

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


def stub(d: Daemon) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(d.channel)


def test_list_update_plan_and_run(daemon: Daemon) -> None:
    p = stub(daemon)
    names = [x.name for x in p.ListPolicies(policy_pb2.ListPoliciesRequest()).policies]
    assert names == ["balance", "power", "recover", "scale"]
    assert all(
        not x.enabled and x.leader
        for x in p.ListPolicies(policy_pb2.ListPoliciesRequest()).policies
    )
    got = p.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(name="balance", enabled=True, interval_seconds=30)
    ).policy
    assert (got.enabled, got.interval_seconds) == (True, 30)
    assert daemon.core.policies.runtime.settings("balance").interval_s == 30
    for name in ("balance", "power", "recover", "scale"):
        plan = p.PlanPolicy(policy_pb2.PlanPolicyRequest(name=name))
        assert plan.summary  # every planner says why (also when there is nothing to do)
    op = p.RunPolicy(policy_pb2.RunPolicyRequest(name="power")).operation
    done = daemon.wait(op)
    assert done.state == SUCCEEDED and done.result["actions"] == "0"
    with pytest.raises(grpc.RpcError) as err:
        p.PlanPolicy(policy_pb2.PlanPolicyRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        p.UpdatePolicy(policy_pb2.UpdatePolicyRequest(name="balance", interval_seconds=0.1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_scale_group_grows_to_its_minimum(daemon: Daemon) -> None:
    op = daemon.wait(
        daemon.vms.CreateVM(
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name="web-template",
                    vcpus=1,
                    memory_mib=256,
                    start=False,
                    disks=[vm_pb2.DiskSpec(image="base")],
                )
            )
        ).operation
    )
    assert op.state == SUCCEEDED
    p = stub(daemon)
    g = p.CreateScaleGroup(
        policy_pb2.CreateScaleGroupRequest(
            group=policy_pb2.ScaleGroup(
                name="web", template_vm_name="web-template", min_size=2, max_size=4
            )
        )
    ).group
    assert (g.min_size, g.max_size, list(g.members)) == (2, 4, [])
    done = daemon.wait(p.RunPolicy(policy_pb2.RunPolicyRequest(name="scale")).operation)
    assert done.state == SUCCEEDED, done.error
    members = p.GetScaleGroup(policy_pb2.GetScaleGroupRequest(name="web")).group.members
    assert len(members) == 2
    with pytest.raises(grpc.RpcError) as err:
        p.CreateScaleGroup(
            policy_pb2.CreateScaleGroupRequest(
                group=policy_pb2.ScaleGroup(
                    name="bad", template_vm_name="web-template", min_size=3, max_size=1
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        p.CreateScaleGroup(
            policy_pb2.CreateScaleGroupRequest(
                group=policy_pb2.ScaleGroup(
                    name="nope", template_vm_name="ghost", min_size=1, max_size=2
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_scale_group_cli(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    from vmmgr.cli.main import main

    daemon.wait(
        daemon.vms.CreateVM(
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name="tmpl",
                    vcpus=1,
                    memory_mib=256,
                    start=False,
                    disks=[vm_pb2.DiskSpec(image="base")],
                )
            )
        ).operation
    )
    base = ["--endpoint", daemon.address]
    assert main([*base, "scale", "create", "api", "--template", "tmpl", "--max", "3"]) == 0
    assert main([*base, "scale", "set", "api", "--max", "5"]) == 0
    capsys.readouterr()
    assert main([*base, "-o", "json", "scale", "get", "api"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert (got["max_size"], got["template_vm_name"]) == (5, "tmpl")
    assert main([*base, "scale", "delete", "api"]) == 0
