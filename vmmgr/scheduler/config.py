"""Scheduler knobs: overcommit ratios, enabled filters, weigher multipliers, spread/pack."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from vmmgr.errors import InvalidArgument


class Strategy(StrEnum):
    """How the ``balance`` weigher treats a host pool."""

    SPREAD = "spread"  # prefer the emptiest host (fault isolation, headroom)
    PACK = "pack"  # prefer the fullest host that fits (free whole hosts for power-off / big VMs)


class BatchOrder(StrEnum):
    """Order in which ``place_batch`` decides; results always come back in input order."""

    GIVEN = "given"  # caller's order is the priority order (recovery sorts by HA priority)
    LARGEST_FIRST = "largest_first"  # accelerators, then memory, then vCPUs: better packing


# Filter names in evaluation order; a host is charged to the first filter that rejects it.
FILTER_NAMES: tuple[str, ...] = (
    "host_state",
    "host_selection",
    "host_tags",
    "vcpu",
    "memory",
    "disk",
    "gpu",
    "vgpu",
    "mig",
    "fpga",
    "affinity",
    "numa",
)

DEFAULT_MULTIPLIERS: Mapping[str, float] = MappingProxyType(
    {
        "balance": 1.0,
        "accelerator_reserve": 2.0,
        "gpu_fragmentation": 2.0,
        "numa_alignment": 0.5,
        "load": 0.5,
        "soft_affinity": 1.0,
    }
)


def _frozen(m: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Every knob of the scheduler; invalid values raise InvalidArgument naming the knob."""

    cpu_ratio: float = 4.0  # vCPUs per physical CPU
    memory_ratio: float = 1.0
    disk_ratio: float = 1.0
    reserved_host_cpus: int = 0  # kept back for the host itself before the ratio applies
    reserved_host_memory_mib: int = 0
    default_strategy: Strategy = Strategy.SPREAD
    pool_strategies: Mapping[str, Strategy] = field(default_factory=dict)
    weigher_multipliers: Mapping[str, float] = field(default_factory=dict)  # merged on defaults
    enabled_filters: tuple[str, ...] = FILTER_NAMES
    unknown_load: float = 0.5  # assumed load (0..1) of a host without telemetry
    allow_unknown_device_health: bool = True  # False: only HEALTHY devices are placed on
    mixed_vgpu_models: frozenset[str] = frozenset()  # GPU models that mix vGPU types per GPU
    explain_samples: int = 3  # sample (host, reason) pairs kept per filter
    ranked_limit: int = 10  # ranked hosts returned in a Placement

    def __post_init__(self) -> None:
        for name in ("cpu_ratio", "memory_ratio", "disk_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidArgument(name, f"must be a finite number > 0, got {value!r}")
        for name in ("reserved_host_cpus", "reserved_host_memory_mib", "explain_samples"):
            if getattr(self, name) < 0:
                raise InvalidArgument(name, "must be >= 0")
        if self.ranked_limit < 1:
            raise InvalidArgument("ranked_limit", "must be >= 1")
        if not 0.0 <= self.unknown_load <= 1.0:
            raise InvalidArgument("unknown_load", "must be within 0..1")
        unknown = [f for f in self.enabled_filters if f not in FILTER_NAMES]
        if unknown:
            raise InvalidArgument(
                "enabled_filters", f"unknown filter(s) {unknown}; known: {list(FILTER_NAMES)}"
            )
        merged = dict(DEFAULT_MULTIPLIERS)
        for name, mult in self.weigher_multipliers.items():
            if name not in DEFAULT_MULTIPLIERS:
                raise InvalidArgument(
                    "weigher_multipliers",
                    f"unknown weigher {name!r}; known: {list(DEFAULT_MULTIPLIERS)}",
                )
            if not math.isfinite(mult):
                raise InvalidArgument("weigher_multipliers", f"{name}: must be finite")
            merged[name] = float(mult)
        object.__setattr__(self, "weigher_multipliers", _frozen(merged))
        strategies = {}
        for pool, strat in self.pool_strategies.items():
            try:
                strategies[pool] = Strategy(strat)
            except ValueError:
                raise InvalidArgument(
                    "pool_strategies", f"{pool}: {strat!r} is not 'spread' or 'pack'"
                ) from None
        object.__setattr__(self, "pool_strategies", MappingProxyType(strategies))
        try:
            object.__setattr__(self, "default_strategy", Strategy(self.default_strategy))
        except ValueError:
            raise InvalidArgument(
                "default_strategy", f"{self.default_strategy!r} is not 'spread' or 'pack'"
            ) from None
        object.__setattr__(
            self, "mixed_vgpu_models", frozenset(m.casefold() for m in self.mixed_vgpu_models)
        )

    def strategy(self, pool: str) -> Strategy:
        return self.pool_strategies.get(pool, self.default_strategy)
