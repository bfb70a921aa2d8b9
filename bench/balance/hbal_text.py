"""Ganeti htools text backend (``hbal -t FILE``): write a ClusterSnapshot, read hbal's moves.

Format, as hspace -S writes it (Ganeti 3.0): sections separated by blank lines.
  group:    name|uuid|alloc_policy|tags|networks
  node:     name|mem_total|mem_node|mem_free|disk_total|disk_free|cpus|flag(N/Y/M/D)|group_uuid|
            spindles|tags|exclusive_storage|free_spindles|node_cpus|cpu_speed
  instance: name|mem|disk|vcpus|status|auto_balance|pnode|snode|disk_template|tags|spindles|
            total_spindles|forthcoming
  ipolicy:  group|min specs|min specs;max specs|disk templates|vcpu_ratio|spindle_ratio
            (specs: mem,cpu,disk_size,disk_count,nic_count,spindles)
Instances use the "ext" template (externally mirrored, like shared storage): hbal moves them
with ``gnt-instance migrate -n NODE`` to any node, which is the live migration vmmgr plans.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmmgr.snapshot import ClusterSnapshot

GROUP_UUID = "uuid-group-1"
_TEMPLATES = "diskless,file,sharedfile,plain,blockdev,drbd,rbd,ext,gluster"
_STEP = re.compile(r"^\s*\d+\.\s+(\S+)\s+(\S+)\s+=>\s+(\S+)\s+([0-9.eE+-]+)")


def write(snapshot: ClusterSnapshot, path: Path, cpu_ratio: float) -> None:
    by_host: dict[str, int] = {}
    for vm in snapshot.vms:
        if vm.host is not None:
            by_host[vm.host] = by_host.get(vm.host, 0) + vm.memory_mib
    lines = [f"group-1|{GROUP_UUID}|preferred||", ""]
    for h in snapshot.hosts:
        free = h.memory_mib - by_host.get(h.name, 0)
        flag = "N" if h.state == "up" else "Y"
        lines.append(
            f"{h.name}|{h.memory_mib}|0|{free}|1048576|1048576|{h.cpus}|{flag}|{GROUP_UUID}"
            "|1||N|0|1|1.0"
        )
    lines.append("")
    for vm in snapshot.vms:
        lines.append(f"{vm.name}|{vm.memory_mib}|1024|{vm.vcpus}|running|Y|{vm.host}||ext||1|1|N")
    lines += ["", ""]
    spec = f"128,1,1024,1,1,1|128,1,1024,1,1,1;4194304,256,1048576,16,8,12|{_TEMPLATES}"
    lines.append(f"|{spec}|{cpu_ratio}|32.0")
    lines.append(f"group-1|{spec}|{cpu_ratio}|32.0")
    path.write_text("\n".join(lines) + "\n")


def parse_steps(output: str) -> list[tuple[str, str, str, float]]:
    """hbal's solution steps: (instance, from node, to node, hbal score after the step)."""
    steps = []
    for line in output.splitlines():
        m = _STEP.match(line)
        if m:
            src = m.group(2).split(":")[0]
            dst = m.group(3).split(":")[0]
            steps.append((m.group(1), src, dst, float(m.group(4))))
    return steps
