"""vmmgr.ports.Migrator over libvirt: the bridge from HostConnections to migration.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.hypervisor.libvirt.connection import LibvirtConnection
from drivers.hypervisor.libvirt.migration import LiveMigrationOptions, cold_migrate, migrate_live
from vmmgr.errors import InvalidArgument
from vmmgr.migration import DEFAULT_SCHEDULE, MigrationResult, Step
from vmmgr.ports import HostConnection, LiveOptions


def _libvirt(conn: HostConnection, field: str) -> LibvirtConnection:
    if not isinstance(conn, LibvirtConnection):
        raise InvalidArgument(field, "migration needs libvirt connections")
    return conn


class _Flag:
    def __init__(self, fn: Callable[[], bool]) -> None:
        self.fn = fn

    def is_set(self) -> bool:
        return self.fn()


class LibvirtMigrator:
    def live(
        self,
        source: HostConnection,
        vm_id: str,
        target_uri: str,
        options: LiveOptions,
        *,
        on_progress: Callable[[Any], None],
        cancelled: Callable[[], bool],
    ) -> MigrationResult:
        src = _libvirt(source, "source")
        schedule = tuple(s for s in options.schedule if isinstance(s, Step)) or DEFAULT_SCHEDULE
        opts = LiveMigrationOptions(
            bandwidth_mib_s=options.bandwidth_mib_s,
            max_downtime_ms=options.max_downtime_ms,
            auto_converge=options.auto_converge,
            allow_postcopy=options.allow_postcopy,
            copy_storage=options.copy_storage,
            unsafe=options.unsafe,
            schedule=schedule,
        )
        return migrate_live(
            src.lookup_domain(vm_id),
            target_uri,
            opts,
            on_progress=on_progress,
            cancel=_Flag(cancelled),
        )

    def cold(
        self,
        source: HostConnection,
        vm_id: str,
        target: HostConnection,
        *,
        pool: str,
        shutdown_timeout_s: float,
        on_progress: Callable[[Any], None],
        cancelled: Callable[[], bool],
    ) -> MigrationResult:
        src = _libvirt(source, "source")
        dst = _libvirt(target, "target_host")
        return cold_migrate(
            src.lookup_domain(vm_id),
            dst.virconn,
            dest_pool=pool,
            shutdown_timeout_s=shutdown_timeout_s,
            on_progress=on_progress,
            cancel=_Flag(cancelled),
        )
