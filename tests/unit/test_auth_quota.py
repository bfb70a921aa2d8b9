"""Quota arithmetic (pure) and the store-backed check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmmgr.auth.quota import Demand, check_quota, project_demand, violations
from vmmgr.errors import ResourceExhausted
from vmmgr.state import Store, open_store, repo
from vmmgr.state.models import VM, Project


def test_no_quota_no_violation() -> None:
    assert violations({}, Demand(100, 10**6, {"H100": 8}), Demand(100, 10**6, {"H100": 8})) == []


def test_each_dimension_is_checked_against_use_plus_request() -> None:
    quotas = {"vcpus": 8, "memory_mib": 4096, "gpu:H100": 2}
    used = Demand(6, 4000, {"H100": 1})
    assert violations(quotas, used, Demand(2, 96, {"H100": 1})) == []  # exactly at the limit
    found = violations(quotas, used, Demand(3, 97, {"H100": 2}))
    assert [(v.key, v.limit, v.used, v.requested) for v in found] == [
        ("vcpus", 8, 6, 3), ("memory_mib", 4096, 4000, 97), ("gpu:H100", 2, 1, 2)]
    assert [v.field for v in found] == ["spec.vcpus", "spec.memory_mib", "spec.gpus"]


def test_zero_quota_forbids_and_other_models_are_free() -> None:
    quotas = {"gpu:H100": 0}
    assert violations(quotas, Demand(), Demand(gpus={"A100": 4})) == []
    assert [v.key for v in violations(quotas, Demand(), Demand(gpus={"H100": 1}))] == ["gpu:H100"]


def test_a_request_for_nothing_never_violates() -> None:
    assert violations({"vcpus": 0}, Demand(5), Demand(0)) == []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(None, tmp_path)
    yield s
    s.close()


def _vm(name: str, project: str, vcpus: int, memory: int, gpus: list[dict[str, object]]) -> VM:
    return VM(name=name, project=project, vcpus=vcpus, memory_mib=memory,
              spec={"gpus": gpus})


def test_check_quota_reads_usage_from_the_store(store: Store) -> None:
    with store.session() as s:
        repo.add_project(s, Project(name="ml", quotas={"vcpus": 4, "gpu:H100": 2}))
        repo.add_vm(s, _vm("a", "ml", 2, 512, [{"model": "H100", "count": 1}]))
        repo.add_vm(s, _vm("b", "ml", 1, 512, [{"model": "H100", "count": 1}]))
        repo.add_vm(s, _vm("c", "other", 16, 512, [{"model": "H100", "count": 8}]))
    with store.read_session() as s:
        assert project_demand(s, "ml") == Demand(3, 1024, {"H100": 2})
        check_quota(s, "ml", Demand(1, 128))
        check_quota(s, "nobody", Demand(1000, 1, {"H100": 99}))  # no project row: no quota
        with pytest.raises(ResourceExhausted) as e:
            check_quota(s, "ml", Demand(1, 128, {"H100": 1}))
    assert e.value.field == "spec.gpus"
    assert "quota gpu:H100 exceeded: 2 in use + 1 requested > limit 2" in e.value.message
    assert e.value.details == {"quota": "gpu:H100", "limit": "2", "used": "2", "requested": "1"}
