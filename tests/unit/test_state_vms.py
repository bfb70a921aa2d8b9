"""Store suite: hosts, VMs (pagination, labels, generations), volumes, images.

Runs on SQLite here and on Postgres from tests/postgres/test_store.py (same functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import InvalidRequestError
from state_fixtures import *  # noqa: F403  (the store fixtures)

from vmmgr.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from vmmgr.ports import HostInfo, HostNumaCell
from vmmgr.state import Store, repo
from vmmgr.state.models import VM, Host, Image, ImageReplica, VMState, Volume


def _vm(name: str, **kw: object) -> VM:
    return VM(name=name, vcpus=2, memory_mib=1024, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- hosts


def test_host_add_get_list_roundtrip(store: Store) -> None:
    with store.session() as s:
        repo.add_host(s, Host(name="b", uri="qemu:///system", tags=["gpu"], pool="p1"))
        repo.add_host(s, Host(name="a", uri="qemu:///system", state="up"))
    with store.read_session() as s:
        b = repo.get_host(s, "b")
        assert b.tags == ["gpu"] and b.pool == "p1" and b.state == "down"
        assert b.created_at.tzinfo is not None and b.created_at.utcoffset() == timedelta(0)
        assert [h.name for h in repo.list_hosts(s)] == ["a", "b"]
        assert [h.name for h in repo.list_hosts(s, state="up")] == ["a"]
        assert [h.name for h in repo.list_hosts(s, pool="p1")] == ["b"]
        assert [h.name for h in repo.list_hosts(s, tag="gpu")] == ["b"]


def test_host_duplicate_name_is_already_exists(store: Store, host: Host) -> None:
    with store.session() as s:
        with pytest.raises(AlreadyExists) as e:
            repo.add_host(s, Host(name="h1", uri="x"))
        assert e.value.field == "name"
        # the transaction is still usable after the failed insert
        repo.add_host(s, Host(name="h2", uri="x"))
    with store.read_session() as s:
        assert [h.name for h in repo.list_hosts(s)] == ["h1", "h2"]


def test_host_bad_state_and_not_found(store: Store, host: Host) -> None:
    with store.session() as s:
        with pytest.raises(InvalidArgument) as e:
            repo.add_host(s, Host(name="x", uri="x", state="sideways"))
        assert e.value.field == "state"
        with pytest.raises(NotFound):
            repo.get_host(s, "nope")
        with pytest.raises(NotFound):
            repo.update_host(s, "nope", {"uri": "y"})
        with pytest.raises(InvalidArgument) as e:
            repo.update_host(s, "h1", {"name": "renamed"})
        assert e.value.field == "name"


def test_host_update_facts_and_down(store: Store, host: Host) -> None:
    info = HostInfo(
        hostname="node1",
        host_uuid="u-1",
        arch="x86_64",
        cpus=16,
        memory_mib=32768,
        numa_cells=(HostNumaCell(0, 8, 16384), HostNumaCell(1, 8, 16384)),
        hypervisor="QEMU",
        hypervisor_version="7.2.0",
        libvirt_version="9.0.0",
        domain_types=("qemu", "kvm"),
    )
    t = datetime(2030, 1, 1, tzinfo=UTC)
    with store.session() as s:
        repo.mark_host_down(s, "h1", "connection refused")
    with store.session() as s:
        assert repo.get_host(s, "h1").error == "connection refused"
        repo.update_host(s, "h1", {"maintenance": True})
        h = repo.record_host_facts(s, "h1", info, now=t)
    assert h.state == "maintenance" and h.error == "" and h.last_seen == t
    with store.read_session() as s:
        h = repo.get_host(s, "h1")
        assert h.cpus == 16 and h.domain_types == ["qemu", "kvm"]
        assert h.numa_cells[1] == {"id": 1, "cpus": 8, "memory_mib": 16384}
        assert h.last_seen == t


def test_host_delete_refused_while_vms_live_there(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a", host="h1"))
    with store.session() as s:
        with pytest.raises(FailedPrecondition) as e:
            repo.delete_host(s, "h1")
        assert "1 VMs" in str(e.value)
    with store.session() as s:
        repo.delete_vm(s, vm.id)
        repo.delete_host(s, "h1")
    with store.read_session() as s:
        assert repo.list_hosts(s) == []
        with pytest.raises(NotFound):
            repo.delete_host(s, "h1")


# ---------------------------------------------------------------------------- VMs


def test_vm_add_get_by_id_and_name(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(
            s,
            _vm("web", host="h1", labels={"tier": "web"}, spec={"networks": [{"name": "n"}]}),
        )
    assert vm.generation == 1 and len(vm.id) == 36
    with store.read_session() as s:
        got = repo.get_vm(s, vm.id)
        assert got.spec == {"networks": [{"name": "n"}]} and got.labels == {"tier": "web"}
        assert repo.get_vm_by_name(s, "web").id == vm.id
        assert repo.find_vm(s, "missing") is None
        with pytest.raises(NotFound):
            repo.get_vm(s, "missing")
        with pytest.raises(NotFound) as e:
            repo.get_vm_by_name(s, "web", project="other")
        assert e.value.field == "name"


def test_vm_name_unique_per_project(store: Store) -> None:
    with store.session() as s:
        repo.add_vm(s, _vm("a"))
        repo.add_vm(s, _vm("a", project="p2"))  # same name, other project: fine
        with pytest.raises(AlreadyExists) as e:
            repo.add_vm(s, _vm("a"))
        assert e.value.field == "name" and "default" in str(e.value)
    with store.read_session() as s:
        assert repo.count_vms(s) == 2


def test_vm_unknown_host_and_bad_values(store: Store) -> None:
    with store.session() as s:
        with pytest.raises(NotFound) as e:
            repo.add_vm(s, _vm("a", host="nowhere"))
        assert e.value.field == "host"
        with pytest.raises(InvalidArgument) as e2:
            repo.add_vm(s, _vm("a", state="exploded"))
        assert e2.value.field == "state"
        with pytest.raises(InvalidArgument) as e2:
            repo.add_vm(s, _vm("a", desired_power="maybe"))
        assert e2.value.field == "desired_power"


def test_vm_update_bumps_generation_and_checks_it(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a"))
    with store.session() as s:
        v2 = repo.update_vm(s, vm.id, {"state": "running", "host": "h1"}, expected_generation=1)
    assert v2.generation == 2 and v2.state == "running" and v2.host == "h1"
    assert v2.updated_at >= vm.updated_at
    with store.session() as s:
        with pytest.raises(Aborted) as e:
            repo.update_vm(s, vm.id, {"state": "stopped"}, expected_generation=1)
        assert e.value.field == "generation" and "generation is 2" in str(e.value)
    with store.read_session() as s:
        assert repo.get_vm(s, vm.id).state == "running"
    with store.session() as s:  # no expectation: unconditional, still bumps
        assert repo.update_vm(s, vm.id, {"description": "d"}).generation == 3


def test_vm_update_failures(store: Store) -> None:
    with store.session() as s:
        a = repo.add_vm(s, _vm("a"))
        repo.add_vm(s, _vm("b"))
    with store.session() as s:
        with pytest.raises(NotFound):
            repo.update_vm(s, "missing", {"state": "running"}, expected_generation=1)
        with pytest.raises(InvalidArgument) as e:
            repo.update_vm(s, a.id, {"generation": 9})
        assert e.value.field == "generation"
        with pytest.raises(InvalidArgument):
            repo.update_vm(s, a.id, {"state": "bogus"})
        with pytest.raises(NotFound) as e2:
            repo.update_vm(s, a.id, {"host": "nowhere"})
        assert e2.value.field == "host"
        with pytest.raises(AlreadyExists) as e3:
            repo.update_vm(s, a.id, {"name": "b"})
        assert e3.value.field == "name"
        # still usable after the failed rename
        assert repo.update_vm(s, a.id, {"name": "c"}).name == "c"


def test_vm_update_labels_reindexes(store: Store) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a", labels={"env": "dev"}))
    with store.session() as s:
        repo.update_vm(s, vm.id, {"labels": {"env": "prod", "team": "x"}})
    with store.read_session() as s:
        assert repo.list_vms(s, labels={"env": "dev"}).items == []
        assert [v.name for v in repo.list_vms(s, labels={"env": "prod", "team": "x"}).items] == [
            "a"
        ]


def test_list_vms_filters(store: Store, host: Host) -> None:
    with store.session() as s:
        repo.add_host(s, Host(name="h2", uri="x"))
        repo.add_vm(s, _vm("a", host="h1", state="running", labels={"app": "db"}))
        repo.add_vm(s, _vm("b", host="h2", state="stopped", labels={"app": "db", "x": "1"}))
        repo.add_vm(s, _vm("c", host="h1", state="running", project="p2"))
        repo.add_vm(s, _vm("d"))
    with store.read_session() as s:

        def names(**kw: object) -> list[str]:
            return [v.name for v in repo.list_vms(s, **kw).items]  # type: ignore[arg-type]

        assert names() == ["a", "b", "c", "d"]
        assert names(host="h1") == ["a", "c"]
        assert names(states=["running"]) == ["a", "c"]
        assert names(states=["stopped", "pending"]) == ["b", "d"]
        assert names(project="p2") == ["c"]
        assert names(labels={"app": "db"}) == ["a", "b"]
        assert names(labels={"app": "db", "x": "1"}) == ["b"]
        assert names(labels={"app": "web"}) == []
        assert names(host="h1", states=["running"], project="default") == ["a"]


def test_list_vms_keyset_pagination_visits_every_vm_once(store: Store) -> None:
    with store.session() as s:
        for i in range(25):
            repo.add_vm(s, _vm(f"vm{i % 10}", project=f"p{i // 10}"))  # duplicate names
    seen: list[tuple[str, str]] = []
    token = ""
    pages = 0
    with store.read_session() as s:
        while True:
            page = repo.list_vms(s, page_size=7, page_token=token)
            pages += 1
            seen += [(v.name, v.id) for v in page.items]
            if not page.next_page_token:
                break
            token = page.next_page_token
    assert pages == 4 and len(seen) == 25 and len(set(seen)) == 25
    # ordered by name (ids only break ties, in the database's collation)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)


def test_list_vms_without_spec(store: Store) -> None:
    with store.session() as s:
        repo.add_vm(s, _vm("a", spec={"big": "x" * 1000}, labels={"k": "v"}))
    with store.read_session() as s:
        (vm,) = repo.list_vms(s, include_spec=False).items
        assert vm.name == "a" and vm.labels == {"k": "v"}
        with pytest.raises(InvalidRequestError):
            _ = vm.spec
        (full,) = repo.list_vms(s).items
    assert full.spec == {"big": "x" * 1000}


def test_list_vms_page_size_and_bad_token(store: Store) -> None:
    with store.session() as s:
        for i in range(3):
            repo.add_vm(s, _vm(f"v{i}"))
    with store.read_session() as s:
        full = repo.list_vms(s, page_size=3)
        assert len(full.items) == 3 and full.next_page_token == ""
        assert len(repo.list_vms(s).items) == 3  # 0 = default size
        with pytest.raises(InvalidArgument) as e:
            repo.list_vms(s, page_size=-1)
        assert e.value.field == "page_size"
        for bad in ("!!!", "bm90LWpzb24", "WyJhIl0"):  # junk, not json, wrong arity
            with pytest.raises(InvalidArgument) as e:
                repo.list_vms(s, page_token=bad)
            assert e.value.field == "page_token"


def test_project_usage_sums_resources(store: Store) -> None:
    with store.session() as s:
        repo.add_vm(s, VM(name="a", vcpus=2, memory_mib=512, disk_gib=10, project="p"))
        repo.add_vm(s, VM(name="b", vcpus=4, memory_mib=1024, disk_gib=0, project="p"))
        repo.add_vm(s, VM(name="c", vcpus=8, memory_mib=1, project="q"))
    with store.read_session() as s:
        assert repo.project_usage(s, "p") == repo.Usage(2, 6, 1536, 10)
        assert repo.project_usage(s, "empty") == repo.Usage(0, 0, 0, 0)


def test_vm_delete_refuses_while_volumes_remain_unless_forced(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a", host="h1", labels={"k": "v"}))
        repo.add_volume(s, Volume(vm_id=vm.id, host="h1", pool="p", name="a.qcow2", path="/a"))
    with store.session() as s:
        with pytest.raises(FailedPrecondition) as e:
            repo.delete_vm(s, vm.id)
        assert "1 volumes" in str(e.value)
        with pytest.raises(Aborted):
            repo.delete_vm(s, vm.id, expected_generation=7)
    with store.session() as s:
        repo.delete_vm(s, vm.id, force=True)
    with store.read_session() as s:
        assert repo.find_vm(s, vm.id) is None
        assert repo.list_volumes(s, vm_id=vm.id) == []
        assert repo.list_vms(s, labels={"k": "v"}).items == []  # label rows cascaded
        with pytest.raises(NotFound):
            repo.delete_vm(s, vm.id)


# ---------------------------------------------------------------------------- volumes


def test_volumes_per_vm_and_host(store: Store, host: Host) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a", host="h1"))
        v1 = repo.add_volume(s, Volume(vm_id=vm.id, host="h1", pool="p", name="o", path="/o"))
        repo.add_volume(
            s, Volume(vm_id=vm.id, host="h1", pool="p", name="s", path="/s", kind="seed")
        )
    with store.session() as s:
        assert [v.name for v in repo.list_volumes(s, vm_id=vm.id)] == ["o", "s"]
        assert len(repo.list_volumes(s, host="h1")) == 2
        assert repo.list_volumes(s, host="h9") == []
        assert repo.get_volume(s, v1.id).path == "/o"
        repo.delete_volume(s, v1.id)
        with pytest.raises(NotFound):
            repo.delete_volume(s, v1.id)
        with pytest.raises(InvalidArgument) as e:
            repo.add_volume(
                s, Volume(vm_id=vm.id, host="h1", pool="p", name="x", path="/x", kind="tape")
            )
        assert e.value.field == "kind"
        with pytest.raises(NotFound) as e2:
            repo.add_volume(s, Volume(vm_id="missing", host="h1", pool="p", name="x", path="/x"))
        assert e2.value.field == "vm_id"


# ---------------------------------------------------------------------------- images


def test_images_and_replicas(store: Store, host: Host) -> None:
    with store.session() as s:
        repo.add_image(s, Image(name="tiny", size_bytes=5 * 2**32, sha256="ab"))
        with pytest.raises(AlreadyExists) as e:
            repo.add_image(s, Image(name="tiny"))
        assert e.value.field == "name"
        repo.add_replica(s, ImageReplica(image="tiny", host="h1", pool="default", path="/t"))
        with pytest.raises(AlreadyExists):
            repo.add_replica(s, ImageReplica(image="tiny", host="h1", pool="default", path="/u"))
        with pytest.raises(NotFound) as e2:
            repo.add_replica(s, ImageReplica(image="nope", host="h1", pool="d", path="/t"))
        assert e2.value.field == "image"
        with pytest.raises(NotFound) as e2:
            repo.add_replica(s, ImageReplica(image="tiny", host="h9", pool="d", path="/t"))
        assert e2.value.field == "host"
    with store.session() as s:
        assert repo.get_image(s, "tiny").size_bytes == 5 * 2**32  # needs 64-bit
        assert [i.name for i in repo.list_images(s)] == ["tiny"]
        assert repo.find_replica(s, "tiny", "h1", "default") is not None
        assert repo.find_replica(s, "tiny", "h1", "other") is None
        assert len(repo.list_replicas(s, image="tiny")) == 1
        assert repo.list_replicas(s, host="h9") == []
        with pytest.raises(FailedPrecondition):
            repo.delete_image(s, "tiny")  # replica still on h1
        repo.delete_replica(s, "tiny", "h1", "default")
        with pytest.raises(NotFound):
            repo.delete_replica(s, "tiny", "h1", "default")
        repo.add_vm(s, _vm("user", image="tiny"))
        with pytest.raises(FailedPrecondition) as e3:
            repo.delete_image(s, "tiny")
        assert "used by 1 VMs" in str(e3.value)
        repo.add_image(s, Image(name="free"))
        repo.delete_image(s, "free")
        with pytest.raises(NotFound):
            repo.get_image(s, "free")


def test_vm_with_volumes_is_written_whole_or_not_at_all(store: Store) -> None:
    def vol(vm: VM, name: str, kind: str = "overlay") -> Volume:
        return Volume(vm_id=vm.id, host="", pool="p", name=name, path=f"/p/{name}", kind=kind)

    with store.session() as s:
        a = _vm("a", labels={"team": "ml"})
        repo.add_vm(s, a, [vol(a, "a0"), vol(a, "a-seed", "seed")])
        b = _vm("b")
        with pytest.raises(InvalidArgument) as e:
            repo.add_vm(s, b, [vol(b, "b0", kind="floppy")])
        assert e.value.field == "kind"
        dup = _vm("a")
        with pytest.raises(AlreadyExists):
            repo.add_vm(s, dup, [vol(dup, "dup0")])
    with store.read_session() as s:
        assert sorted(v.name for v in repo.list_volumes(s)) == ["a-seed", "a0"]
        assert repo.count_vms(s) == 1 and repo.get_vm(s, a.id).labels == {"team": "ml"}


def test_set_state_bumps_the_generation_and_needs_the_vm(store: Store) -> None:
    with store.session() as s:
        vm = repo.add_vm(s, _vm("a", state="creating"))
    with store.session() as s:
        repo.set_vm_state(s, vm.id, VMState.RUNNING, "started")
    with store.read_session() as s:
        now = repo.get_vm(s, vm.id)
    assert (now.state, now.state_reason, now.generation) == (
        "running",
        "started",
        vm.generation + 1,
    )
    with store.session() as s, pytest.raises(NotFound):
        repo.set_vm_state(s, "missing", VMState.RUNNING)
