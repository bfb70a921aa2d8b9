"""Project quotas: vCPUs, memory and whole GPUs by model, checked before a VM is created.

Quota keys in ``Project.quotas``: ``vcpus``, ``memory_mib`` and ``gpu:<MODEL>``. A missing key
means no limit; 0 means none allowed. Usage counts every VM of the project, whatever its state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlmodel import Session, select

from vmmgr.errors import ResourceExhausted
from vmmgr.requests import VmCreate
from vmmgr.state import repo
from vmmgr.state.models import VM, Project

GPU_PREFIX = "gpu:"


@dataclass(frozen=True, slots=True)
class Demand:
    vcpus: int = 0
    memory_mib: int = 0
    gpus: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    key: str
    limit: int
    used: int
    requested: int

    @property
    def field(self) -> str:
        if self.key.startswith(GPU_PREFIX):
            return "spec.gpus"
        return f"spec.{self.key}"


def demand_of(req: VmCreate) -> Demand:
    """What creating ``req`` asks of its project's quota."""
    gpus: Counter[str] = Counter()
    for g in req.gpus:
        gpus[g.model] += g.count or 1
    return Demand(req.vcpus, req.memory_mib, dict(gpus))


def violations(quotas: Mapping[str, int], used: Demand, wanted: Demand) -> list[Violation]:
    """Every quota that ``wanted`` on top of ``used`` would exceed (pure)."""
    pairs: list[tuple[str, int, int]] = [
        ("vcpus", used.vcpus, wanted.vcpus),
        ("memory_mib", used.memory_mib, wanted.memory_mib),
    ]
    pairs += [(GPU_PREFIX + m, used.gpus.get(m, 0), n) for m, n in sorted(wanted.gpus.items())]
    out = []
    for key, have, want in pairs:
        limit = quotas.get(key)
        if limit is not None and want > 0 and have + want > limit:
            out.append(Violation(key, limit, have, want))
    return out


def project_demand(session: Session, project: str) -> Demand:
    """What the project's VMs hold now."""
    usage = repo.project_usage(session, project)
    gpus: Counter[str] = Counter()
    for spec in session.exec(select(VM.spec).where(VM.project == project)):
        for g in (spec or {}).get("gpus", ()):
            gpus[str(g.get("model", ""))] += int(g.get("count", 1) or 1)
    return Demand(usage.vcpus, usage.memory_mib, dict(gpus))


def check_quota(session: Session, project: str, wanted: Demand) -> None:
    """Raise ResourceExhausted naming the first quota ``wanted`` would exceed."""
    row = repo.read_row(session, Project, project)
    if row is None or not row.quotas:
        return
    found = violations(row.quotas, project_demand(session, project), wanted)
    if found:
        v = found[0]
        raise ResourceExhausted(
            f"project {project!r} quota {v.key} exceeded: {v.used} in use + {v.requested} "
            f"requested > limit {v.limit}",
            field=v.field,
            details={
                "quota": v.key,
                "limit": str(v.limit),
                "used": str(v.used),
                "requested": str(v.requested),
            },
        )
