"""Store suite: operations, events, samples, groups, policies, scale groups, projects, tokens,
audit, leases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from vmmgr.state import Store, repo
from vmmgr.state.models import (
    VM,
    Device,
    DeviceSample,
    Host,
    HostSample,
    PlacementGroup,
    Project,
    ScaleGroup,
)

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------- operations


def test_operation_lifecycle(store: Store) -> None:
    with store.session() as s:
        op = repo.create_operation(s, "vm.create", "vm-1", request_id="req-1")
    assert op.state == "pending" and op.progress == 0
    with store.session() as s:
        repo.update_operation(s, op.id, state="running", progress=40, message="copying image")
        done = repo.finish_operation(s, op.id, "succeeded", result={"host": "h1"})
    assert done.progress == 100 and done.finished_at is not None
    assert done.result == {"host": "h1"} and done.message == "copying image"
    with store.read_session() as s:
        got = repo.get_operation(s, op.id)
        assert got.state == "succeeded" and got.message == "copying image"
        assert repo.find_operation_by_request_id(s, "req-1") is not None
        assert repo.find_operation_by_request_id(s, "") is None


def test_operation_failure_paths(store: Store) -> None:
    with store.session() as s:
        op = repo.create_operation(s, "vm.migrate", "vm-1")
        with pytest.raises(InvalidArgument) as e:
            repo.update_operation(s, op.id, progress=101)
        assert e.value.field == "progress"
        with pytest.raises(InvalidArgument):
            repo.update_operation(s, op.id, state="succeeded")  # finishing has its own call
        with pytest.raises(InvalidArgument) as e:
            repo.finish_operation(s, op.id, "failed")  # no error given
        assert e.value.field == "error"
        with pytest.raises(InvalidArgument):
            repo.create_operation(s, "", "x")
        failed = repo.finish_operation(
            s, op.id, "failed", error=ResourceExhausted("no room", field="memory_mib")
        )
        assert (failed.error_code, failed.error_field) == ("RESOURCE_EXHAUSTED", "memory_mib")
        assert (failed.progress, failed.message, failed.result) == (0, "", {})  # kept
        with pytest.raises(FailedPrecondition):
            repo.finish_operation(s, op.id, "succeeded")  # finished is final
        assert repo.get_operation(s, op.id).state == "failed"
        with pytest.raises(NotFound):
            repo.finish_operation(s, "nope", "succeeded")
        with pytest.raises(FailedPrecondition):
            repo.request_cancel(s, op.id)
        with pytest.raises(NotFound):
            repo.get_operation(s, "nope")


def test_cancel_and_restart_marks_unfinished_failed(store: Store) -> None:
    with store.session() as s:
        a = repo.create_operation(s, "vm.create", "a")
        b = repo.create_operation(s, "vm.create", "b")
        c = repo.create_operation(s, "vm.delete", "c")
        repo.update_operation(s, b.id, state="running")
        repo.finish_operation(s, c.id, "succeeded")
        assert repo.request_cancel(s, a.id).cancel_requested
    with store.session() as s:
        failed = repo.fail_unfinished_operations(s)
    assert {o.id for o in failed} == {a.id, b.id}
    with store.read_session() as s:
        assert repo.get_operation(s, c.id).state == "succeeded"
        for op_id in (a.id, b.id):
            op = repo.get_operation(s, op_id)
            assert op.state == "failed" and op.error_code == "ABORTED"
            assert op.error_message == repo.RESTART_MESSAGE and op.finished_at is not None
        assert len(repo.list_operations(s, state="failed")) == 2
        assert [o.target for o in repo.list_operations(s, target="c")] == ["c"]
        assert len(repo.list_operations(s, kind="vm.create")) == 2
        assert len(repo.list_operations(s, limit=1)) == 1


def test_prune_operations_keeps_unfinished(store: Store) -> None:
    with store.session() as s:
        old = repo.create_operation(s, "vm.create", "a")
        repo.finish_operation(s, old.id, "cancelled")
        live = repo.create_operation(s, "vm.create", "b")
    with store.session() as s:
        assert repo.prune_operations(s, finished_before=datetime.now(UTC) + timedelta(1)) == 1
    with store.read_session() as s:
        assert [o.id for o in repo.list_operations(s)] == [live.id]


# ---------------------------------------------------------------------------- events


def test_events_since_seq_and_prune_never_reuses_seq(store: Store) -> None:
    with store.session() as s:
        evs = [
            repo.append_event(s, "vm.started", f"vm-{i}", "ok", attributes={"i": i})
            for i in range(5)
        ]
        repo.append_event(s, "host.down", "h1", "gone", severity="error")
    seqs = [e.seq for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    with store.read_session() as s:
        assert [e.seq for e in repo.list_events(s, since_seq=seqs[2])] == seqs[3:] + [seqs[-1] + 1]
        assert [e.kind for e in repo.list_events(s, kind="host.down")] == ["host.down"]
        assert [e.attributes for e in repo.list_events(s, resource="vm-1")] == [{"i": 1}]
        assert len(repo.list_events(s, limit=2)) == 2
        with pytest.raises(InvalidArgument):
            repo.list_events(s, limit=0)
    with store.session() as s:
        assert repo.prune_events(s, keep=2) == 4
        assert repo.prune_events(s, keep=2) == 0
        with pytest.raises(InvalidArgument):
            repo.prune_events(s, keep=-1)
        last = repo.last_event_seq(s)
        assert repo.prune_events(s, keep=0) == 2
        assert repo.last_event_seq(s) == 0
        nxt = repo.append_event(s, "x")
    assert nxt.seq is not None and nxt.seq > last  # AUTOINCREMENT / sequence
    with store.session() as s, pytest.raises(InvalidArgument) as e:
        repo.append_event(s, "x", severity="meh")
    assert e.value.field == "severity"


# ---------------------------------------------------------------------------- samples


def test_device_samples_window_and_prune(store: Store, host: Host) -> None:
    with store.session() as s:
        repo.upsert_devices(
            s,
            "h1",
            [
                Device(host="h1", address="a", kind="gpu"),
                Device(host="h1", address="b", kind="gpu"),
            ],
        )
        repo.append_device_samples(
            s,
            [
                DeviceSample(device_id=f"h1/{d}", time=T0 + timedelta(seconds=i), gpu_util=i)
                for d in "ab"
                for i in range(10)
            ],
        )
        # same (device, time) again: replaces
        repo.append_device_samples(
            s, [DeviceSample(device_id="h1/a", time=T0, gpu_util=99, temperature_c=None)]
        )
    with store.session() as s:
        window = repo.device_samples(s, "h1/a", since=T0 + timedelta(seconds=7))
        assert [w.gpu_util for w in window] == [7, 8, 9]
        assert window[0].time == T0 + timedelta(seconds=7)
        assert [w.gpu_util for w in repo.device_samples(s, "h1/a", limit=2)] == [8, 9]
        assert repo.device_samples(s, "h1/a")[0].gpu_util == 99
        assert repo.prune_device_samples(s, keep=3, device_id="h1/a") == 7
        assert repo.prune_device_samples(s, keep=4) == 6  # only b still has extra
        assert len(repo.device_samples(s, "h1/a")) == 3
        assert [w.gpu_util for w in repo.device_samples(s, "h1/b")] == [6, 7, 8, 9]
        with pytest.raises(InvalidArgument):
            repo.prune_device_samples(s, keep=-1)


def test_host_samples_window_and_prune(store: Store, host: Host) -> None:
    with store.session() as s:
        repo.append_host_samples(
            s,
            [
                HostSample(
                    host="h1",
                    time=T0 + timedelta(minutes=i),
                    cpu_util=i / 10,
                    memory_used_mib=1000 + i,
                )
                for i in range(6)
            ],
        )
    with store.session() as s:
        assert len(repo.host_samples(s, "h1", since=T0 + timedelta(minutes=4))) == 2
        assert [x.cpu_util for x in repo.host_samples(s, "h1", limit=1)] == [0.5]
        assert repo.prune_host_samples(s, keep=2) == 4
        assert repo.prune_host_samples(s, keep=2, host="h1") == 0
        assert [x.memory_used_mib for x in repo.host_samples(s, "h1")] == [1004, 1005]
        with pytest.raises(InvalidArgument):
            repo.prune_host_samples(s, keep=-3)


# ---------------------------------------------------------------------------- groups


def test_groups_membership(store: Store) -> None:
    with store.session() as s:
        a = repo.add_vm(s, VM(name="a", vcpus=1, memory_mib=1))
        b = repo.add_vm(s, VM(name="b", vcpus=1, memory_mib=1))
        repo.add_group(s, PlacementGroup(name="db", policy="anti-affinity"))
        repo.add_group(s, PlacementGroup(name="web", policy="affinity", hard=False))
        with pytest.raises(AlreadyExists):
            repo.add_group(s, PlacementGroup(name="db"))
        with pytest.raises(InvalidArgument) as e:
            repo.add_group(s, PlacementGroup(name="x", policy="near"))
        assert e.value.field == "policy"
        repo.add_group_member(s, "db", a.id)
        repo.add_group_member(s, "db", a.id)  # idempotent
        repo.add_group_member(s, "db", b.id)
        repo.set_vm_groups(s, b.id, ["web", "db", "web"])
        with pytest.raises(NotFound):
            repo.add_group_member(s, "nope", a.id)
        with pytest.raises(NotFound) as e2:
            repo.add_group_member(s, "db", "no-vm")
        assert e2.value.field == "vm_id"
        with pytest.raises(NotFound) as e2:
            repo.set_vm_groups(s, a.id, ["ghost"])
        assert e2.value.field == "groups"
    with store.session() as s:
        assert repo.group_members(s, "db") == sorted([a.id, b.id])
        assert repo.groups_of_vm(s, b.id) == ["db", "web"]
        assert [g.name for g in repo.list_groups(s)] == ["db", "web"]
        assert repo.get_group(s, "web").hard is False
        assert repo.remove_group_member(s, "db", a.id) is True
        assert repo.remove_group_member(s, "db", a.id) is False
        with pytest.raises(FailedPrecondition):
            repo.delete_group(s, "db")
        repo.delete_group(s, "db", force=True)
        assert repo.groups_of_vm(s, b.id) == ["web"]
        repo.delete_vm(s, b.id)  # memberships cascade with the VM
        assert repo.group_members(s, "web") == []
        with pytest.raises(NotFound):
            repo.get_group(s, "db")


# ---------------------------------------------------------------------------- policies


def test_policy_configs(store: Store) -> None:
    with store.session() as s:
        repo.upsert_policy_config(
            s, "balance", enabled=True, interval_s=30, params={"threshold": 0.2}
        )
        repo.upsert_policy_config(s, "balance", interval_s=60)  # others keep their values
        with pytest.raises(InvalidArgument) as e:
            repo.upsert_policy_config(s, "balance", interval_s=0)
        assert e.value.field == "interval_s"
        repo.record_policy_run(s, "balance", {"moves": 2}, at=T0)
        with pytest.raises(NotFound):
            repo.record_policy_run(s, "nope", {})
    with store.read_session() as s:
        cfg = repo.get_policy_config(s, "balance")
        assert (cfg.enabled, cfg.interval_s, cfg.params) == (True, 60, {"threshold": 0.2})
        assert cfg.last_run == T0 and cfg.last_result == {"moves": 2}
        assert [c.name for c in repo.list_policy_configs(s)] == ["balance"]


def test_scale_groups(store: Store) -> None:
    with store.session() as s:
        repo.add_scale_group(
            s, ScaleGroup(name="workers", template={"vcpus": 2}, min_size=1, max_size=5, desired=2)
        )
        with pytest.raises(AlreadyExists):
            repo.add_scale_group(s, ScaleGroup(name="workers"))
        for bad, field in (
            (dict(min_size=-1, max_size=1, desired=0), "min_size"),
            (dict(min_size=3, max_size=2, desired=2), "max_size"),
            (dict(min_size=1, max_size=2, desired=3), "desired"),
            (dict(cooldown_s=-5), "cooldown_s"),
        ):
            with pytest.raises(InvalidArgument) as e:
                repo.add_scale_group(s, ScaleGroup(name="x", **bad))  # type: ignore[arg-type]
            assert e.value.field == field
        g = repo.update_scale_group(s, "workers", {"desired": 5, "last_scale_at": T0})
        assert g.desired == 5
        with pytest.raises(InvalidArgument):
            repo.update_scale_group(s, "workers", {"desired": 6})
        with pytest.raises(InvalidArgument):
            repo.update_scale_group(s, "workers", {"name": "x"})
    with store.session() as s:
        g = repo.get_scale_group(s, "workers")
        assert g.desired == 5 and g.last_scale_at == T0 and g.template == {"vcpus": 2}
        assert [x.name for x in repo.list_scale_groups(s)] == ["workers"]
        repo.delete_scale_group(s, "workers")
        with pytest.raises(NotFound):
            repo.get_scale_group(s, "workers")


# ---------------------------------------------------------------------------- auth


def test_projects_and_quotas(store: Store) -> None:
    with store.session() as s:
        repo.ensure_project(s, "default")
        repo.ensure_project(s, "default")  # idempotent
        repo.add_project(s, Project(name="ml", quotas={"vcpus": 64}))
        with pytest.raises(AlreadyExists):
            repo.add_project(s, Project(name="ml"))
        with pytest.raises(InvalidArgument) as e:
            repo.set_project_quotas(s, "ml", {"gpus": -1})
        assert e.value.field == "quotas.gpus"
        repo.set_project_quotas(s, "ml", {"vcpus": 32, "gpus": 4})
        repo.add_vm(s, VM(name="a", vcpus=1, memory_mib=1, project="ml"))
    with store.session() as s:
        assert repo.get_project(s, "ml").quotas == {"vcpus": 32, "gpus": 4}
        assert [p.name for p in repo.list_projects(s)] == ["default", "ml"]
        with pytest.raises(FailedPrecondition):
            repo.delete_project(s, "ml")
        repo.delete_project(s, "default")
        with pytest.raises(NotFound):
            repo.get_project(s, "default")


def test_tokens_store_only_hash(store: Store) -> None:
    with store.session() as s:
        tok, secret = repo.create_token(s, "ci", "default", "operator")
        with pytest.raises(InvalidArgument) as e:
            repo.create_token(s, "x", role="root")
        assert e.value.field == "role"
        with pytest.raises(InvalidArgument):
            repo.create_token(s, "")
    assert secret.startswith(repo.TOKEN_PREFIX) and secret not in tok.hash
    assert tok.hash == repo.hash_secret(secret)
    with store.session() as s:
        found = repo.verify_token(s, secret)
        assert found is not None and found.role == "operator"
        assert repo.verify_token(s, secret + "x") is None
        assert [t.name for t in repo.list_tokens(s, project="default")] == ["ci"]
        assert repo.list_tokens(s, project="other") == []
        repo.revoke_token(s, tok.id)
        assert repo.verify_token(s, secret) is None
        with pytest.raises(NotFound):
            repo.revoke_token(s, "nope")


def test_audit_is_append_only(store: Store) -> None:
    with store.session() as s:
        a = repo.append_audit(
            s, principal="alice", method="/vmmgr.v1.VMs/Create", project="ml", target="vm-1"
        )
        repo.append_audit(
            s,
            principal="bob",
            method="/vmmgr.v1.VMs/Delete",
            result_code="PERMISSION_DENIED",
            time=T0,
        )
    with store.read_session() as s:
        assert [r.principal for r in repo.list_audit(s)] == ["alice", "bob"]
        assert [r.principal for r in repo.list_audit(s, since_seq=a.seq or 0)] == ["bob"]
        assert [r.target for r in repo.list_audit(s, principal="alice")] == ["vm-1"]
        assert [r.principal for r in repo.list_audit(s, project="ml")] == ["alice"]
        assert repo.list_audit(s, principal="bob")[0].time == T0
        with pytest.raises(InvalidArgument):
            repo.list_audit(s, limit=0)
    assert not any(n.startswith(("update_audit", "delete_audit")) for n in repo.__all__)


# ---------------------------------------------------------------------------- leases


def test_leases(store: Store) -> None:
    with store.session() as s:
        assert repo.acquire_lease(s, "leader", "a", 10, now=T0) is True
        assert repo.acquire_lease(s, "leader", "b", 10, now=T0 + timedelta(seconds=5)) is False
        assert repo.acquire_lease(s, "leader", "a", 10, now=T0 + timedelta(seconds=5)) is True
        lease = repo.get_lease(s, "leader")
        assert lease is not None and lease.expires_at == T0 + timedelta(seconds=15)
        # expired: b takes over
        assert repo.acquire_lease(s, "leader", "b", 10, now=T0 + timedelta(seconds=16)) is True
        assert repo.release_lease(s, "leader", "a") is False
        assert repo.release_lease(s, "leader", "b") is True
        assert repo.get_lease(s, "leader") is None
        with pytest.raises(InvalidArgument):
            repo.acquire_lease(s, "leader", "a", 0)
        with pytest.raises(InvalidArgument):
            repo.acquire_lease(s, "leader", "", 5)
