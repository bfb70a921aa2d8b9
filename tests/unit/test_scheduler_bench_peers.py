"""The benchmark's peers are real and sound: hail accepts our IAllocator requests and agrees on
feasibility; the MILP bound is the optimum on instances small enough to know it by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "placement"))

import hail_peer  # noqa: E402
from milp_bound import hosts_lower_bound  # noqa: E402

from vmmgr.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from vmmgr.scheduler.synthetic import host  # noqa: E402
from vmmgr.snapshot import ClusterSnapshot, HostState, PlacementRequest  # noqa: E402

HAIL = hail_peer.find_hail()
needs_hail = pytest.mark.skipif(HAIL is None, reason="ganeti-htools (hail) not installed")


def _cluster() -> ClusterSnapshot:
    return ClusterSnapshot(
        (
            host("full", cpus=4, memory_mib=8192, used_vcpus=16, used_memory_mib=8192),
            host("down", cpus=64, memory_mib=65536, state=HostState.DOWN),
            host("free", cpus=4, memory_mib=8192, used_vcpus=2, used_memory_mib=1024),
        )
    )


@needs_hail
def test_hail_accepts_the_request_and_avoids_full_and_offline_nodes(tmp_path: Path) -> None:
    assert HAIL is not None
    snap = _cluster()
    r = PlacementRequest("new", 2, 4096)
    path = tmp_path / "req.json"
    path.write_text(json.dumps(hail_peer.iallocator_request(snap, [r], 4.0)))
    _, answer = hail_peer.run_hail(HAIL, path)
    assert answer["result"] == ["free"]
    assert Scheduler(SchedulerConfig(cpu_ratio=4.0)).place(snap, r).host == "free"


@needs_hail
def test_hail_multi_allocate_and_a_refusal(tmp_path: Path) -> None:
    assert HAIL is not None
    snap = _cluster()
    reqs = [PlacementRequest(f"n{i}", 1, 2048) for i in range(3)]
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(hail_peer.iallocator_request(snap, reqs, 4.0)))
    _, answer = hail_peer.run_hail(HAIL, path)
    placed = answer["result"][0]
    assert [name for name, _ in placed] == ["n0", "n1", "n2"]
    assert {nodes[0] for _, nodes in placed} == {"free"}
    too_big = tmp_path / "big.json"
    too_big.write_text(
        json.dumps(hail_peer.iallocator_request(snap, [PlacementRequest("x", 2, 65536)], 4.0))
    )
    with pytest.raises(RuntimeError, match="hail refused"):
        hail_peer.run_hail(HAIL, too_big)


def test_milp_bound_is_the_optimum_where_the_trivial_bound_is_not() -> None:
    # three VMs of 0.6 host each: volume says 2 hosts, but no two fit together -> 3
    sizes = np.array([[6.0], [6.0], [6.0]])
    b = hosts_lower_bound(sizes, np.array([10.0]), max_hosts=3, time_limit=10)
    assert b.trivial == 2
    assert b.lower == 3 and b.optimal


def test_milp_bound_two_dimensions() -> None:
    # cpu-heavy and memory-heavy VMs pair up: 4 VMs in 2 hosts
    sizes = np.array([[8.0, 2.0], [8.0, 2.0], [2.0, 8.0], [2.0, 8.0]])
    b = hosts_lower_bound(sizes, np.array([10.0, 10.0]), max_hosts=4, time_limit=10)
    assert b.lower == 2 and b.optimal
