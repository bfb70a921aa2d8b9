"""Ganeti's ``hail`` (IAllocator plugin, Debian ganeti-htools) as a placement peer.

Builds a valid IAllocator request ("allocate" or "multi-allocate") for a CPU/memory cluster taken
from a vmmgr ClusterSnapshot: every host becomes a node with its total/free memory and CPUs, and
each host's existing usage becomes one "plain" instance on it (so hail's accounting starts where
vmmgr's does). Node-group ipolicy vcpu-ratio = the vmmgr cpu_ratio; memory is not overcommitted
by either side. Disk is left out (diskless requests) so both compare CPU and memory only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from vmmgr.snapshot import ClusterSnapshot, HostState, PlacementRequest

HAIL_PATHS = (
    "/usr/lib/ganeti/iallocators/hail",
    "/usr/lib/ganeti/3.0/usr/lib/ganeti/iallocators/hail",
)


def find_hail() -> str | None:
    for p in HAIL_PATHS:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("hail")


def _ipolicy(cpu_ratio: float) -> dict[str, Any]:
    spec_max = {
        "cpu-count": 512,
        "disk-count": 16,
        "disk-size": 10_485_760,
        "memory-size": 16_777_216,
        "nic-count": 8,
        "spindle-use": 8,
    }
    spec_min = dict.fromkeys(spec_max, 0) | {"cpu-count": 1, "memory-size": 1}
    return {
        "disk-templates": ["diskless", "plain"],
        "minmax": [{"max": spec_max, "min": spec_min}],
        "spindle-ratio": 32.0,
        "std": {
            "cpu-count": 1,
            "disk-count": 0,
            "disk-size": 0,
            "memory-size": 128,
            "nic-count": 0,
            "spindle-use": 0,
        },
        "vcpu-ratio": cpu_ratio,
    }


def _instance(name: str, vcpus: int, memory_mib: int, node: str | None = None) -> dict[str, Any]:
    inst: dict[str, Any] = {
        "disk_space_total": 0,
        "disk_template": "diskless",
        "disks": [],
        "hypervisor": "kvm",
        "memory": memory_mib,
        "nics": [],
        "spindle_use": 0,
        "tags": [],
        "vcpus": vcpus,
    }
    if node is None:
        inst |= {"name": name, "os": "debian", "required_nodes": 1}
    else:
        inst |= {"admin_state": "up", "admin_state_source": "admin", "nodes": [node]}
    return inst


def iallocator_request(
    snap: ClusterSnapshot, requests: list[PlacementRequest], cpu_ratio: float
) -> dict[str, Any]:
    ipol = _ipolicy(cpu_ratio)
    nodes: dict[str, Any] = {}
    instances: dict[str, Any] = {}
    for i, h in enumerate(snap.hosts):
        nodes[h.name] = {
            "drained": h.state == HostState.MAINTENANCE,
            "offline": h.state == HostState.DOWN,
            "free_disk": 0,
            "total_disk": 0,
            "free_spindles": 0,
            "total_spindles": 0,
            "free_memory": h.memory_mib - h.used_memory_mib,
            "total_memory": h.memory_mib,
            "reserved_memory": 0,
            "reserved_cpus": 0,
            "i_pri_memory": h.used_memory_mib,
            "i_pri_up_memory": h.used_memory_mib,
            "total_cpus": h.cpus,
            "group": "uuid-group-1",
            "master_candidate": True,
            "master_capable": True,
            "vm_capable": True,
            "ndparams": {"exclusive_storage": False, "oob_program": None, "spindle_count": 1},
            "primary_ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            "secondary_ip": f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}",
            "tags": [],
        }
        if h.used_vcpus or h.used_memory_mib:
            instances[f"existing-{h.name}"] = _instance(
                f"existing-{h.name}", max(1, h.used_vcpus), h.used_memory_mib, h.name
            )
    new = [_instance(r.vm_id, r.vcpus, r.memory_mib) for r in requests]
    if len(new) == 1:
        req = new[0] | {"type": "allocate"}
    else:
        req = {"type": "multi-allocate", "instances": new}
    return {
        "cluster_name": "bench",
        "cluster_tags": [],
        "enabled_hypervisors": ["kvm"],
        "ipolicy": ipol,
        "nodegroups": {
            "uuid-group-1": {
                "alloc_policy": "preferred",
                "ipolicy": ipol,
                "name": "default",
                "networks": [],
                "tags": [],
            }
        },
        "nodes": nodes,
        "instances": instances,
        "request": req,
    }


# no global N+1 check (vmmgr does none either); node memory as reported, not a static 4 GiB
HAIL_FLAGS = ("--no-capacity-checks", "--static-kvm-node-memory=0")


def run_hail(hail: str, path: Path) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one hail process on a request file, and its parsed answer."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [hail, *HAIL_FLAGS, str(path)], capture_output=True, text=True, check=False
    )
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"hail failed ({out.returncode}): {out.stderr.strip()[:500]}")
    answer = json.loads(out.stdout)
    if not answer.get("success"):
        raise RuntimeError(f"hail refused the request: {answer.get('info')}")
    return dt, answer


def spawn_baseline() -> float:
    """Wall seconds to spawn and reap a do-nothing process (``true``), the floor of any peer."""
    t0 = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - t0
