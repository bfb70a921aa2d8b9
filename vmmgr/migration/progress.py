"""Migration progress from libvirt job stats (a plain dict), as pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Phase = Literal["starting", "precopy", "postcopy", "completed", "failed", "cancelled", "aborted"]


@dataclass(frozen=True, slots=True)
class JobSample:
    """One poll of ``virDomainGetJobStats`` flattened to the fields decisions need."""

    elapsed_ms: int = 0
    data_total: int = 0
    data_processed: int = 0
    data_remaining: int = 0
    memory_total: int = 0
    memory_remaining: int = 0
    disk_total: int = 0
    disk_remaining: int = 0
    bandwidth_bps: float = 0.0  # memory transfer rate, bytes/s
    dirty_rate_bps: float = 0.0  # guest dirtying rate, bytes/s
    iteration: int = 0  # pre-copy passes over memory
    downtime_ms: int | None = None  # measured (completed job) or expected
    postcopy_requests: int = 0

    @property
    def percent(self) -> float:
        """0..100 from data remaining vs total (re-sent dirty pages never push it past 100)."""
        if self.data_total <= 0:
            return 0.0
        done = 1.0 - self.data_remaining / self.data_total
        return round(max(0.0, min(1.0, done)) * 100.0, 1)


def _int(stats: Mapping[str, object], key: str) -> int:
    v = stats.get(key, 0)
    return int(v) if isinstance(v, int | float) else 0


def sample_from_stats(stats: Mapping[str, object]) -> JobSample:
    """Map libvirt's typed-parameter job stats (``dom.jobStats()``) to a ``JobSample``."""
    page = _int(stats, "memory_page_size") or 4096
    downtime = stats.get("downtime")
    return JobSample(
        elapsed_ms=_int(stats, "time_elapsed"),
        data_total=_int(stats, "data_total"),
        data_processed=_int(stats, "data_processed"),
        data_remaining=_int(stats, "data_remaining"),
        memory_total=_int(stats, "memory_total"),
        memory_remaining=_int(stats, "memory_remaining"),
        disk_total=_int(stats, "disk_total"),
        disk_remaining=_int(stats, "disk_remaining"),
        bandwidth_bps=float(_int(stats, "memory_bps")),
        dirty_rate_bps=float(_int(stats, "memory_dirty_rate") * page),
        iteration=_int(stats, "memory_iteration"),
        downtime_ms=int(downtime) if isinstance(downtime, int | float) else None,
        postcopy_requests=_int(stats, "memory_postcopy_requests"),
    )


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    """What a progress callback receives (and an Operation's progress is built from)."""

    vm: str
    phase: Phase
    percent: float
    elapsed_s: float
    data_total: int = 0
    data_remaining: int = 0
    dirty_rate_bps: float = 0.0
    bandwidth_bps: float = 0.0
    iteration: int = 0
    max_downtime_ms: int = 0
    message: str = ""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    vm: str
    source_uri: str
    dest_uri: str
    mode: Literal["live", "cold"]
    total_ms: int  # wall clock of the whole call
    downtime_ms: int | None  # guest paused time (live: libvirt's completed job stats)
    data_transferred: int = 0
    postcopy: bool = False
    max_downtime_ms: int = 0  # last value applied by the schedule
    actions: tuple[str, ...] = ()  # schedule actions applied, for the operation log
