"""What a placement decision returns: the chosen host and devices, the ranking, the explanation.

``Scheduler.place`` never raises for "nothing fits": it returns a Placement whose ``host`` is
None and whose explanation carries the per-filter counts; callers that want an error call
``placement.require()`` (or ``no_host_fits(placement)``), which raises ``NoHostFits`` with those
counts. This keeps the dry-run / ``vm explain`` path and the create path on one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmmgr.errors import NoHostFits


@dataclass(frozen=True, slots=True)
class DeviceClaim:
    """One device the VM gets. For vGPU the parent GPU, for MIG the GPU holding the instance."""

    device_id: str
    kind: str  # "gpu" | "fpga" | "vgpu" | "mig"
    model: str
    profile: str | None = None  # mdev type name (vGPU) or MIG profile name
    numa_node: int | None = None


@dataclass(frozen=True, slots=True)
class RankedHost:
    host: str
    score: float
    # (weigher name, multiplier x normalised value); they sum to ``score``
    weights: tuple[tuple[str, float], ...] = ()
    devices: tuple[DeviceClaim, ...] = ()  # the chosen host always; every host when explaining


@dataclass(frozen=True, slots=True)
class FilterReport:
    name: str
    rejected: int  # hosts this filter rejected (each host is charged to the first that rejects)
    samples: tuple[tuple[str, str], ...] = ()  # (host, reason), a few of them

    def sample_lines(self) -> list[str]:
        return [f"{host}: {reason}" for host, reason in self.samples]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Per filter, how many hosts it rejected and why; rejected + passed == hosts_total."""

    vm_id: str
    hosts_total: int
    hosts_passed: int
    filters: tuple[FilterReport, ...]

    def rejections(self) -> dict[str, int]:
        return {f.name: f.rejected for f in self.filters}

    def lines(self) -> list[str]:
        out = [f"{self.hosts_passed} of {self.hosts_total} hosts passed all filters"]
        for f in self.filters:
            if f.rejected:
                out.append(f"{f.name}: rejected {f.rejected}")
                out.extend(f"  {line}" for line in f.sample_lines())
        return out


@dataclass(frozen=True, slots=True)
class Placement:
    vm_id: str
    host: str | None
    devices: tuple[DeviceClaim, ...]
    ranked: tuple[RankedHost, ...]
    explanation: Explanation
    numa_cell: int | None = None  # the cell vCPUs/memory are bound to (NUMA-strict requests)

    @property
    def ok(self) -> bool:
        return self.host is not None

    def require(self) -> Placement:
        """Return self, or raise NoHostFits with the per-filter rejection counts."""
        if self.host is None:
            raise no_host_fits(self)
        return self


def no_host_fits(placement: Placement) -> NoHostFits:
    exp = placement.explanation
    return NoHostFits(
        f"no host fits VM {placement.vm_id!r}: 0 of {exp.hosts_total} hosts passed",
        {name: count for name, count in exp.rejections().items() if count},
    )
