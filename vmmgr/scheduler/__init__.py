"""Accelerator-aware placement: pure filters and weighers over a frozen ClusterSnapshot.

sched = Scheduler(SchedulerConfig(cpu_ratio=4.0))
p = sched.place(snapshot, request)          # Placement; p.host is None when nothing fits
p.require()                                 # ... or raise NoHostFits with per-filter counts
ps = sched.place_batch(snapshot, requests)  # N VMs, claims consistent across the batch
"""

from .config import DEFAULT_MULTIPLIERS, FILTER_NAMES, BatchOrder, SchedulerConfig, Strategy
from .filters import BUILTIN_FILTERS, Filter, FilterContext, HostView, VectorFilter
from .results import (
    DeviceClaim,
    Explanation,
    FilterReport,
    Placement,
    RankedHost,
    no_host_fits,
)
from .scheduler import DEVICE_ASSIGNMENT, Scheduler
from .weighers import BUILTIN_WEIGHERS, VectorWeigher, Weigher, normalise

__all__ = [
    "BUILTIN_FILTERS",
    "BUILTIN_WEIGHERS",
    "DEFAULT_MULTIPLIERS",
    "DEVICE_ASSIGNMENT",
    "FILTER_NAMES",
    "BatchOrder",
    "DeviceClaim",
    "Explanation",
    "Filter",
    "FilterContext",
    "FilterReport",
    "HostView",
    "Placement",
    "RankedHost",
    "Scheduler",
    "SchedulerConfig",
    "Strategy",
    "VectorFilter",
    "VectorWeigher",
    "Weigher",
    "no_host_fits",
    "normalise",
]
