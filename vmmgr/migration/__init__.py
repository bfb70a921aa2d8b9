"""Pure migration logic: migratability, convergence schedule, concurrency limits, evacuation."""

from vmmgr.migration.evacuation import EvacuationStep, Plan, placement_request, plan_evacuation
from vmmgr.migration.limits import (
    Admission,
    MigrationLimiter,
    MigrationLimits,
    MigrationSlot,
    admit,
)
from vmmgr.migration.matrix import (
    HostMigrationInfo,
    Migratability,
    MigratabilityMatrix,
    MigrationPolicy,
    VMMigrationProfile,
    migratability,
)
from vmmgr.migration.progress import (
    JobSample,
    MigrationProgress,
    MigrationResult,
    sample_from_stats,
)
from vmmgr.migration.schedule import (
    DEFAULT_SCHEDULE,
    Action,
    ScheduleState,
    Step,
    next_action,
    validate_schedule,
)

__all__ = [
    "DEFAULT_SCHEDULE",
    "Action",
    "Admission",
    "EvacuationStep",
    "HostMigrationInfo",
    "JobSample",
    "Migratability",
    "MigratabilityMatrix",
    "MigrationLimiter",
    "MigrationLimits",
    "MigrationPolicy",
    "MigrationProgress",
    "MigrationResult",
    "MigrationSlot",
    "Plan",
    "ScheduleState",
    "Step",
    "VMMigrationProfile",
    "admit",
    "migratability",
    "next_action",
    "placement_request",
    "plan_evacuation",
    "sample_from_stats",
    "validate_schedule",
]
