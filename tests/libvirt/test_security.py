"""Authentication, authorization, project scoping, quotas, audit and request ids through the
in-process daemon (libvirt test driver) with tokens required (auth = "on")."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from drivers.hypervisor.libvirt.seed import scratch_root
from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from tests.libvirt.fuzz_messages import Rpc, all_rpcs
from vmmgr.auth.permissions import MUTATING, PERMISSIONS
from vmmgr.errors import ResourceExhausted
from vmmgr.requests import DiskRequest, VmCreate
from vmmgr.state import repo
from vmmgr.state.models import Project, Role
from vmmgr.state.repo import vms as vm_repo
from vmmgr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    host_pb2,
    image_pb2,
    operation_pb2,
    vm_pb2,
)

SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED
Md = tuple[tuple[str, str], ...]


def bearer(secret: str) -> Md:
    return (("authorization", f"Bearer {secret}"),)


@dataclass
class Secured:
    d: Daemon
    admin: Md
    operator: Md  # project "team"
    viewer: Md  # project "team"
    other: Md  # operator of project "other"
    vm_id: str  # a VM of project "team"
    op_id: str  # the operation that created it


def call(d: Daemon, rpc: Rpc, request: object, md: Md) -> grpc.StatusCode:
    """Call any RPC; the status code (OK when it returns)."""
    if rpc.server_streaming:
        stub = d.channel.unary_stream(rpc.path, request_serializer=rpc.request.SerializeToString,
                                      response_deserializer=rpc.response.FromString)
    else:
        stub = d.channel.unary_unary(rpc.path, request_serializer=rpc.request.SerializeToString,
                                     response_deserializer=rpc.response.FromString)
    try:
        result = stub(request, timeout=10, metadata=md)
        if rpc.server_streaming:
            next(iter(result))
    except grpc.RpcError as exc:
        return exc.code()
    except StopIteration:
        pass
    return grpc.StatusCode.OK


@pytest.fixture
def sec(tmp_path: Path) -> Iterator[Secured]:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML)
    image = make_qcow2(tmp_path / "base.qcow2")
    with running_daemon(test_config(tmp_path, auth="on")) as d:
        with d.core.store.session() as s:
            repo.ensure_project(s, "team")
            repo.add_project(s, Project(name="other"))
            secrets = {
                name: repo.create_token(s, name, project, role.value)[1]
                for name, project, role in (
                    ("root", "default", Role.ADMIN), ("op", "team", Role.OPERATOR),
                    ("view", "team", Role.VIEWER), ("stranger", "other", Role.OPERATOR))
            }
        admin = bearer(secrets["root"])
        d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="t1", uri=f"test://{node}"),
                             metadata=admin)
        op = d.images.ImportImage(image_pb2.ImportImageRequest(
            name="base", source_path=str(image)), metadata=admin).operation
        assert d.ops.WaitOperation(operation_pb2.WaitOperationRequest(
            id=op.id, timeout_seconds=60), metadata=admin).operation.state == SUCCEEDED
        operator = bearer(secrets["op"])
        created = d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec("web")), metadata=operator)
        done = d.ops.WaitOperation(operation_pb2.WaitOperationRequest(
            id=created.operation.id, timeout_seconds=60), metadata=operator).operation
        assert done.state == SUCCEEDED, done.error
        yield Secured(d, admin, operator, bearer(secrets["view"]), bearer(secrets["stranger"]),
                      done.result["vm_id"], done.id)


def spec(name: str, **kw: object) -> vm_pb2.VMSpec:
    fields: dict[str, object] = {"vcpus": 1, "memory_mib": 64, **kw}
    return vm_pb2.VMSpec(name=name, disks=[vm_pb2.DiskSpec(image="base")], **fields)  # type: ignore[arg-type]


def rpc_error(fn: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)  # type: ignore[operator]
    return e.value


# ------------------------------------------------------------------ authentication


def test_every_rpc_without_a_token_is_unauthenticated(sec: Secured) -> None:
    rpcs = all_rpcs()
    assert {r.path for r in rpcs} == set(PERMISSIONS)
    for rpc in rpcs:
        assert call(sec.d, rpc, rpc.request(), ()) == grpc.StatusCode.UNAUTHENTICATED, rpc.path


def test_bad_tokens_are_unauthenticated_with_a_clear_message(sec: Secured) -> None:
    for md, words in (
        ((), "requires a bearer token"),
        (bearer("vmm_not_a_real_token"), "unknown or revoked"),
        ((("authorization", "Basic dXNlcjpwdw=="),), "must be 'Bearer <token>'"),
    ):
        err = rpc_error(sec.d.vms.ListVMs, vm_pb2.ListVMsRequest(), metadata=md)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and words in err.details()


def test_health_needs_no_token(sec: Secured) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(sec.d.channel).Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_a_revoked_token_stops_working_at_once(sec: Secured) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(sec.d.channel)
    made = admin.CreateToken(admin_pb2.CreateTokenRequest(
        name="temp", project="team", role=admin_pb2.ROLE_VIEWER), metadata=sec.admin)
    assert made.secret.startswith("vmm_")
    sec.d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=bearer(made.secret))
    admin.RevokeToken(admin_pb2.RevokeTokenRequest(id=made.token.id), metadata=sec.admin)
    err = rpc_error(sec.d.vms.ListVMs, vm_pb2.ListVMsRequest(), metadata=bearer(made.secret))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = admin.ListTokens(admin_pb2.ListTokensRequest(), metadata=sec.admin).tokens
    assert [t.revoked for t in listed if t.id == made.token.id] == [True]
    assert all(not hasattr(t, "secret") for t in listed)


# ------------------------------------------------------------------ authorization


def test_a_viewer_is_denied_every_mutating_rpc(sec: Secured) -> None:
    rpcs = [r for r in all_rpcs() if r.path in MUTATING]
    assert len(rpcs) == len(MUTATING)
    for rpc in rpcs:
        assert call(sec.d, rpc, rpc.request(), sec.viewer) == grpc.StatusCode.PERMISSION_DENIED, \
            rpc.path
    err = rpc_error(sec.d.vms.StopVM, vm_pb2.StopVMRequest(vm="web"), metadata=sec.viewer)
    assert "needs role operator or higher; 'view' has role viewer" in err.details()


def test_an_operator_is_denied_admin_rpcs_and_allowed_vm_work(sec: Secured) -> None:
    err = rpc_error(sec.d.hosts.RemoveHost, host_pb2.RemoveHostRequest(name="t1"),
                    metadata=sec.operator)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "needs role admin" in err.details()
    admin = admin_pb2_grpc.AdminServiceStub(sec.d.channel)
    err = rpc_error(admin.ListAuditRecords, admin_pb2.ListAuditRecordsRequest(),
                    metadata=sec.operator)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    vm = sec.d.vms.SuspendVM(vm_pb2.SuspendVMRequest(vm="web"), metadata=sec.operator).vm
    assert vm.state == vm_pb2.VM_STATE_PAUSED
    # a viewer may read
    got = sec.d.vms.GetVM(vm_pb2.GetVMRequest(vm="web"), metadata=sec.viewer).vm
    assert got.id == sec.vm_id


# ------------------------------------------------------------------ project scoping


def test_a_token_of_another_project_cannot_see_or_touch_the_vm(sec: Secured) -> None:
    d, other = sec.d, sec.other
    denied = [
        (d.vms.GetVM, vm_pb2.GetVMRequest(vm=sec.vm_id)),
        (d.vms.GetVM, vm_pb2.GetVMRequest(vm="web", project="team")),
        (d.vms.StopVM, vm_pb2.StopVMRequest(vm=sec.vm_id)),
        (d.vms.DeleteVM, vm_pb2.DeleteVMRequest(vm=sec.vm_id)),
        (d.vms.RebootVM, vm_pb2.RebootVMRequest(vm=sec.vm_id.upper())),
        (d.vms.ListVMs, vm_pb2.ListVMsRequest(project="team")),
        (d.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec("sneaky", project="team"))),
        (d.vms.ExplainPlacement, vm_pb2.ExplainPlacementRequest(spec=spec("x", project="team"))),
        (d.ops.GetOperation, operation_pb2.GetOperationRequest(id=sec.op_id)),
        (d.ops.CancelOperation, operation_pb2.CancelOperationRequest(id=sec.op_id)),
        (d.ops.ListOperations, operation_pb2.ListOperationsRequest(target=sec.vm_id)),
    ]
    for fn, request in denied:
        err = rpc_error(fn, request, metadata=other)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (request, err.details())
        assert "project 'other'" in err.details()
    # by name, the other project's token looks in its own project only
    err = rpc_error(d.vms.GetVM, vm_pb2.GetVMRequest(vm="web"), metadata=other)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=other).vms == []
    assert [v.id for v in d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=sec.viewer).vms] == [
        sec.vm_id]
    assert len(d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=sec.admin).vms) == 1
    mine = {o.id for o in d.ops.ListOperations(operation_pb2.ListOperationsRequest(),
                                               metadata=sec.viewer).operations}
    theirs = {o.id for o in d.ops.ListOperations(operation_pb2.ListOperationsRequest(),
                                                 metadata=other).operations}
    assert sec.op_id in mine and sec.op_id not in theirs
    # the VM is untouched
    assert d.vms.GetVM(vm_pb2.GetVMRequest(vm=sec.vm_id), metadata=sec.admin).vm.state == \
        vm_pb2.VM_STATE_RUNNING


def test_an_empty_project_becomes_the_tokens_project(sec: Secured) -> None:
    op = sec.d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec("theirs")), metadata=sec.other)
    done = sec.d.ops.WaitOperation(operation_pb2.WaitOperationRequest(
        id=op.operation.id, timeout_seconds=60), metadata=sec.other).operation
    assert done.state == SUCCEEDED, done.error
    vm = sec.d.vms.GetVM(vm_pb2.GetVMRequest(vm="theirs"), metadata=sec.other).vm
    assert vm.spec.project == "other"


# ------------------------------------------------------------------ quotas


def test_quotas_are_enforced_on_create_with_a_clear_message(sec: Secured) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(sec.d.channel)
    admin.UpdateProject(admin_pb2.UpdateProjectRequest(project=admin_pb2.Project(
        name="team", quota=admin_pb2.Quota(vcpus=3, memory_mib=1024, gpus={"H100": 0}))),
        metadata=sec.admin)
    err = rpc_error(sec.d.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec(
        "gpu", gpus=[vm_pb2.GpuRequest(model="H100")])), metadata=sec.operator)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "gpu:H100" in err.details()
    ok = sec.d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec("two", vcpus=2)),
                            metadata=sec.operator)
    assert ok.operation.id  # 1 + 2 = 3 vCPUs: exactly at the quota
    err = rpc_error(sec.d.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec("three")),
                    metadata=sec.operator)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == ("spec.vcpus: project 'team' quota vcpus exceeded: 3 in use + 1 "
                             "requested > limit 3")
    trailing = dict(err.trailing_metadata())
    assert trailing["vmmgr-error-field"] == "spec.vcpus" and trailing["vmmgr-detail-limit"] == "3"
    # a create that does not come through the API (a scale group's) is held to it as well,
    # and leaves nothing behind: no row, no seed build
    seeds_before = set(Path(scratch_root()).glob("vmmgr-seed-*"))
    with pytest.raises(ResourceExhausted):
        sec.d.core.vms.create(VmCreate(name="scaled", vcpus=1, memory_mib=64, project="team",
                                       disks=(DiskRequest(image="base"),)))
    assert set(Path(scratch_root()).glob("vmmgr-seed-*")) <= seeds_before
    with sec.d.core.store.read_session() as s:
        assert not vm_repo.name_taken(s, "scaled", "team")
    # another project is not limited by team's quota
    other = sec.d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec("fine", vcpus=4)),
                               metadata=sec.other)
    assert other.operation.id
    projects = admin.ListProjects(admin_pb2.ListProjectsRequest(), metadata=sec.admin).projects
    team = next(p for p in projects if p.name == "team")
    assert (team.quota.vcpus, team.quota.memory_mib, dict(team.quota.gpus)) == (
        3, 1024, {"H100": 0})


# ------------------------------------------------------------------ audit and request ids


def test_mutating_calls_are_audited_reads_are_not(sec: Secured) -> None:
    d = sec.d
    with d.core.store.read_session() as s:
        before = repo.list_audit(s)[-1].seq or 0
    d.vms.GetVM(vm_pb2.GetVMRequest(vm="web"), metadata=sec.viewer)
    d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=sec.viewer)
    rpc_error(d.vms.StopVM, vm_pb2.StopVMRequest(vm="web"), metadata=sec.viewer)
    rpc_error(d.vms.DeleteVM, vm_pb2.DeleteVMRequest(vm="web"), metadata=())
    d.vms.SuspendVM(vm_pb2.SuspendVMRequest(vm="web"), metadata=sec.operator)
    rpc_error(d.vms.StartVM, vm_pb2.StartVMRequest(vm="nope"), metadata=sec.operator)
    admin = admin_pb2_grpc.AdminServiceStub(d.channel)
    made = admin.CreateToken(admin_pb2.CreateTokenRequest(name="ci", project="team"),
                             metadata=sec.admin)
    rows = admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(after_seq=before),
                                  metadata=sec.admin).records
    got = [(r.principal, r.project, r.method, r.target, r.result_code) for r in rows]
    assert got == [
        ("view", "team", "VMService.StopVM", "web", "PERMISSION_DENIED"),
        ("unauthenticated", "", "VMService.DeleteVM", "web", "UNAUTHENTICATED"),
        ("op", "team", "VMService.SuspendVM", "web", "OK"),
        ("op", "team", "VMService.StartVM", "nope", "NOT_FOUND"),
        ("root", "team", "AdminService.CreateToken", "ci", "OK"),
    ]
    assert all(r.time.seconds > 0 for r in rows)
    assert "needs role operator" in rows[0].message
    assert all(made.secret not in r.message for r in rows)
    only_op = admin.ListAuditRecords(admin_pb2.ListAuditRecordsRequest(
        after_seq=before, principal="op"), metadata=sec.admin).records
    assert [r.method for r in only_op] == ["VMService.SuspendVM", "VMService.StartVM"]


def test_create_vm_is_audited_once_whether_it_succeeds_or_fails(sec: Secured) -> None:
    """A successful CreateVM writes its record in the create's own transaction; a refused
    or failed one gets its record from the interceptor, as every other call does."""
    d = sec.d
    with d.core.store.read_session() as s:
        before = repo.list_audit(s)[-1].seq or 0
    made, call_ = d.vms.CreateVM.with_call(vm_pb2.CreateVMRequest(spec=spec("audited")),
                                           metadata=sec.operator)
    rid = dict(call_.initial_metadata())["x-request-id"]
    rpc_error(d.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec("audited")),
              metadata=(*sec.operator, ("x-request-id", "dup-1")))
    rpc_error(d.vms.CreateVM, vm_pb2.CreateVMRequest(spec=spec("denied")),
              metadata=sec.viewer)
    with d.core.store.read_session() as s:
        rows = [r for r in repo.list_audit(s) if (r.seq or 0) > before]
        vm = vm_repo.find_vm(s, made.operation.target)
    assert [(r.principal, r.method, r.target, r.result_code) for r in rows] == [
        ("op", "VMService.CreateVM", "audited", "OK"),
        ("op", "VMService.CreateVM", "audited", "ALREADY_EXISTS"),
        ("view", "VMService.CreateVM", "denied", "PERMISSION_DENIED"),
    ]
    assert rows[0].message == f"[{rid}] operation {made.operation.id}"
    assert rows[0].project == "team" and vm is not None
    assert rows[1].message.startswith("[dup-1]") and "already exists" in rows[1].message


def test_the_audit_log_has_no_update_or_delete(sec: Secured) -> None:
    names = dir(repo)
    assert "append_audit" in names and "list_audit" in names
    assert not [n for n in names if "audit" in n and n not in (
        "append_audit", "list_audit", "MAX_AUDIT_PAGE")]


def test_request_ids_are_returned_logged_and_recorded(
    sec: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    d = sec.d
    from vmmgr.logs import ContextFilter

    resp, call_ = d.vms.GetVM.with_call(vm_pb2.GetVMRequest(vm="web"), metadata=sec.viewer)
    rid = dict(call_.initial_metadata())["x-request-id"]
    assert len(rid) == 32
    _, call_ = d.vms.GetVM.with_call(vm_pb2.GetVMRequest(vm="web"),
                                     metadata=(*sec.viewer, ("x-request-id", "cli-123")))
    assert dict(call_.initial_metadata())["x-request-id"] == "cli-123"
    # the id rides along in log records emitted while the call runs ...
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO):
        rpc_error(d.vms.StopVM, vm_pb2.StopVMRequest(vm="web"),
                  metadata=(*sec.viewer, ("x-request-id", "deny-7")))
    assert any(getattr(r, "request_id", "") == "deny-7" and "refused" in r.getMessage()
               for r in caplog.records)
    # ... in the audit row, and into the operation a CreateVM starts
    with d.core.store.read_session() as s:
        assert repo.list_audit(s)[-1].message.startswith("[deny-7]")
    op, call_ = d.vms.CreateVM.with_call(vm_pb2.CreateVMRequest(spec=spec("traced")),
                                         metadata=sec.operator)
    rid = dict(call_.initial_metadata())["x-request-id"]
    with d.core.store.read_session() as s:
        assert repo.get_operation(s, op.operation.id).request_id == rid


def test_secrets_never_reach_the_logs(sec: Secured, caplog: pytest.LogCaptureFixture) -> None:
    from vmmgr.logs import ContextFilter, TextFormatter

    caplog.handler.addFilter(ContextFilter())
    admin = admin_pb2_grpc.AdminServiceStub(sec.d.channel)
    with caplog.at_level(logging.DEBUG):
        made = admin.CreateToken(admin_pb2.CreateTokenRequest(
            name="secretive", role=admin_pb2.ROLE_OPERATOR), metadata=sec.admin)
        sec.d.vms.ListVMs(vm_pb2.ListVMsRequest(), metadata=bearer(made.secret))
        rpc_error(sec.d.vms.StopVM, vm_pb2.StopVMRequest(vm="web"),
                  metadata=bearer(made.secret + "x"))
        logging.getLogger("vmmgr.test").warning("leaked %s", made.secret)
    text = "\n".join(TextFormatter().format(r) for r in caplog.records)
    assert "leaked [REDACTED]" in text
    assert made.secret not in text
    assert admin_secret(sec) not in text


def admin_secret(sec: Secured) -> str:
    return sec.admin[0][1].split()[1]
