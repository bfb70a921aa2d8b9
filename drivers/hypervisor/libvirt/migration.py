"""Live and cold migration over libvirt (the side effects; decisions live in vmmgr.migration).

Works on raw ``libvirt.virDomain`` / ``virConnect`` objects, so it does not depend on how the
rest of the libvirt driver wraps connections.

Live: peer-to-peer pre-copy (``migrateToURI3`` with LIVE | PEER2PEER | PERSIST_DEST |
UNDEFINE_SOURCE) runs in a worker thread while the caller's thread polls ``jobStats``, reports
progress, applies the convergence schedule (``vmmgr.migration.schedule.next_action``: max
downtime, post-copy, abort) and watches the cancel signal (``abortJob``). Whatever fails, the VM
must still run on the source: after a failure the source domain is checked and resumed if
libvirt left it paused; anything else is reported as an error that says where the VM is.

Cold: shut the VM down (graceful, then forced), copy its volumes into the target pool over
libvirt streams (sparse, host to host through this process), define and start it on the target,
and only then undefine it and delete the copied volumes on the source. Every step before that
has an undo; the source is untouched until the target runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import libvirt
from lxml import etree

from drivers.hypervisor.libvirt.errors import map_libvirt_error
from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.devices import Disk, HostdevMdev, HostdevPci
from drivers.hypervisor.libvirt.xml.domain import parse_domain
from drivers.hypervisor.libvirt.xml.storage import StorageVolume
from vmmgr.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DriverError,
    FailedPrecondition,
    NotFound,
    VmmgrError,
)
from vmmgr.migration.progress import (
    JobSample,
    MigrationProgress,
    MigrationResult,
    Phase,
    sample_from_stats,
)
from vmmgr.migration.schedule import (
    DEFAULT_SCHEDULE,
    ScheduleState,
    Step,
    next_action,
    validate_schedule,
)
from vmmgr.undo import UndoStack

log = logging.getLogger(__name__)

ProgressFn = Callable[[MigrationProgress], None]
_CHUNK = 1 << 20


class CancelSignal(Protocol):
    """Anything with ``is_set()`` (a ``threading.Event`` works)."""

    def is_set(self) -> bool: ...


# ------------------------------------------------------------------------------------- live


@dataclass(frozen=True, slots=True)
class LiveMigrationOptions:
    """How to live-migrate. Zero means "libvirt's default" for the numeric fields."""

    migrate_uri: str = ""  # VIR_MIGRATE_PARAM_URI, e.g. tcp://10.213.0.12 (data connection)
    listen_address: str = ""  # VIR_MIGRATE_PARAM_LISTEN_ADDRESS on the destination
    bandwidth_mib_s: int = 0
    max_downtime_ms: int = 0  # initial value; the schedule may raise it
    auto_converge: bool = False
    allow_postcopy: bool = False
    copy_storage: bool = False  # VIR_MIGRATE_NON_SHARED_DISK (target needs a covering pool)
    unsafe: bool = False  # shared disk dir on a local filesystem (the lab)
    schedule: tuple[Step, ...] = DEFAULT_SCHEDULE
    poll_interval_s: float = 0.2
    persist_dest: bool = True
    undefine_source: bool = True
    delete_source_disks: bool = True  # with copy_storage: drop the source copies on success


def live_flags(opts: LiveMigrationOptions) -> int:
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
    if opts.persist_dest:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if opts.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if opts.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if opts.allow_postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if opts.copy_storage:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if opts.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return flags


def live_params(opts: LiveMigrationOptions) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    if opts.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = opts.migrate_uri
    if opts.listen_address:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = opts.listen_address
    if opts.bandwidth_mib_s:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = opts.bandwidth_mib_s
    return params


@dataclass(frozen=True, slots=True)
class _Hostdevs:
    pci: tuple[str, ...]
    mdev: tuple[str, ...]


def _hostdevs(dom: libvirt.virDomain) -> _Hostdevs:
    devs = parse_domain(dom.XMLDesc(0)).devices.hostdevs
    return _Hostdevs(
        pci=tuple(h.address for h in devs if isinstance(h, HostdevPci)),
        mdev=tuple(h.uuid for h in devs if isinstance(h, HostdevMdev)),
    )


def _state(dom: libvirt.virDomain) -> tuple[int, int] | None:
    try:
        st, reason = dom.state()
        return int(st), int(reason)
    except libvirt.libvirtError:
        return None


_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pm-suspended",
}


def _map_libvirt_error(e: libvirt.libvirtError, what: str) -> VmmgrError:
    if e.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
        return Aborted(f"{what}: {e.get_error_message() or e}")
    return map_libvirt_error(e, what)


class LiveMigration:
    """One live migration of ``dom`` to the libvirt at ``dest_uri``.

    ``run()`` blocks (migrate in a worker thread, poll in the caller's); or ``start()`` it in
    the background and ``wait()``. ``cancel()`` or the ``cancel`` signal abort it before
    post-copy starts; after that it can only finish (or fail).
    """

    def __init__(
        self,
        dom: libvirt.virDomain,
        dest_uri: str,
        options: LiveMigrationOptions | None = None,
        *,
        on_progress: ProgressFn | None = None,
        cancel: CancelSignal | None = None,
        dest_conn: libvirt.virConnect | None = None,
    ) -> None:
        self.dom = dom
        self.dest_uri = dest_uri
        self.opts = options or LiveMigrationOptions()
        validate_schedule(self.opts.schedule, "options.schedule")
        self.on_progress = on_progress
        self._cancel_signal = cancel
        self._cancel_event = threading.Event()
        self._dest_conn = dest_conn
        self._bg: threading.Thread | None = None
        self._result: MigrationResult | None = None
        self._error: BaseException | None = None
        self.last_progress: MigrationProgress | None = None
        self.name = dom.name()
        self.uuid = dom.UUIDString()
        self._was_paused = False

    # -- public

    def cancel(self) -> None:
        self._cancel_event.set()

    def start(self) -> LiveMigration:
        def body() -> None:
            try:
                self._result = self.run()
            except BaseException as e:  # handed to wait()
                self._error = e

        self._bg = threading.Thread(target=body, name=f"migrate-{self.name}", daemon=True)
        self._bg.start()
        return self

    def wait(self, timeout_s: float | None = None) -> MigrationResult:
        if self._bg is None:
            raise FailedPrecondition("migration not started")
        self._bg.join(timeout_s)
        if self._bg.is_alive():
            raise TimeoutError(f"migration of {self.name} still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def run(self) -> MigrationResult:
        opts = self.opts
        src_uri = self.dom.connect().getURI()
        self._preflight()
        before = _state(self.dom)
        self._was_paused = before is not None and before[0] == libvirt.VIR_DOMAIN_PAUSED
        copied = [
            d.source_file
            for d in _file_disks(self.dom.XMLDesc(0))
            if d.device == "disk" and not d.readonly
        ]
        # the initial max downtime is step 0 of the schedule: applied once the transfer runs
        schedule = opts.schedule
        if opts.max_downtime_ms:
            schedule = (Step(after_s=0, max_downtime_ms=opts.max_downtime_ms), *schedule)
        state = ScheduleState(postcopy_allowed=opts.allow_postcopy)
        actions: list[str] = []
        failure: list[libvirt.libvirtError] = []

        def migrate() -> None:
            try:
                self.dom.migrateToURI3(self.dest_uri, live_params(opts), live_flags(opts))
            except libvirt.libvirtError as e:
                failure.append(e)

        t0 = time.monotonic()
        worker = threading.Thread(target=migrate, name=f"migrate3-{self.name}", daemon=True)
        worker.start()
        stopped_by = ""  # "cancel" or the schedule's abort reason
        last_sample: JobSample | None = None
        self._emit("starting", None, 0.0, state)
        while True:
            worker.join(opts.poll_interval_s)
            if not worker.is_alive():
                break
            elapsed = time.monotonic() - t0
            sample = self._poll()
            if sample is not None:
                last_sample = sample
            if not stopped_by and self._cancel_requested():
                if state.postcopy_started:
                    log.warning("%s: cancel ignored, post-copy already running", self.name)
                else:
                    stopped_by = "cancel"
                    self._abort_job()
                    actions.append(f"{elapsed:.1f}s cancel")
            if not stopped_by:
                act = next_action(schedule, elapsed, sample, state)
                state = act.state
                if act.kind == "set_downtime":
                    with contextlib.suppress(libvirt.libvirtError):
                        self.dom.migrateSetMaxDowntime(act.max_downtime_ms, 0)
                    actions.append(f"{elapsed:.1f}s {act.reason}")
                elif act.kind == "postcopy":
                    try:
                        self.dom.migrateStartPostCopy(0)
                        actions.append(f"{elapsed:.1f}s {act.reason}")
                    except libvirt.libvirtError as e:  # e.g. finished just before
                        # still pre-copy: cancel and later steps keep working
                        state = dataclasses.replace(state, postcopy_started=False)
                        log.warning("%s: post-copy switch failed: %s", self.name, e)
                        actions.append(f"{elapsed:.1f}s post-copy switch failed: {e}")
                elif act.kind == "abort":
                    stopped_by = act.reason
                    self._abort_job()
                    actions.append(f"{elapsed:.1f}s abort: {act.reason}")
            phase: Phase = "postcopy" if state.postcopy_started else "precopy"
            self._emit(phase, sample, elapsed, state)
        total_ms = int((time.monotonic() - t0) * 1000)

        if not failure:
            if opts.copy_storage and opts.delete_source_disks:
                actions += self._delete_source_disks(copied)
            result = self._completed(src_uri, total_ms, state, actions, last_sample)
            self._emit("completed", None, total_ms / 1000, state, percent=100.0)
            return result
        err = failure[0]
        where = self._rollback(state)
        if stopped_by == "cancel":
            self._emit("cancelled", None, total_ms / 1000, state)
            raise Cancelled(
                f"migration of {self.name} cancelled; {where}", details={"rollback": where}
            )
        if stopped_by:
            self._emit("aborted", None, total_ms / 1000, state)
            raise Aborted(
                f"migration of {self.name} aborted ({stopped_by}); {where}",
                details={"rollback": where},
            )
        self._emit("failed", None, total_ms / 1000, state, message=str(err))
        mapped = _map_libvirt_error(err, f"migration of {self.name} to {self.dest_uri} failed")
        mapped.message += f"; {where}"
        mapped.details["rollback"] = where
        raise mapped

    # -- internals

    def _preflight(self) -> None:
        if not self.dom.isActive():
            raise FailedPrecondition(f"VM {self.name} is not running; use cold migration")
        devs = _hostdevs(self.dom)
        if devs.pci:
            raise FailedPrecondition(
                f"VM {self.name} has whole PCI passthrough ({', '.join(devs.pci)}): "
                "live migration impossible, cold migration only"
            )
        if self.opts.allow_postcopy and devs.mdev:
            raise FailedPrecondition(
                f"VM {self.name} has VFIO mediated devices: post-copy refused",
                field="allow_post_copy",
            )

    def _cancel_requested(self) -> bool:
        if self._cancel_event.is_set():
            return True
        return self._cancel_signal is not None and self._cancel_signal.is_set()

    def _abort_job(self) -> None:
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as e:  # the job may have just finished
            log.info("%s: abortJob: %s", self.name, e)

    def _poll(self) -> JobSample | None:
        try:
            stats = self.dom.jobStats(0)
        except libvirt.libvirtError:
            return None
        if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return sample_from_stats(stats)

    def _emit(
        self,
        phase: Phase,
        sample: JobSample | None,
        elapsed_s: float,
        state: ScheduleState,
        *,
        percent: float | None = None,
        message: str = "",
    ) -> None:
        s = sample or JobSample()
        prev = self.last_progress.percent if self.last_progress else 0.0
        p = MigrationProgress(
            vm=self.name,
            phase=phase,
            percent=percent if percent is not None else (s.percent if sample else prev),
            elapsed_s=round(elapsed_s, 3),
            data_total=s.data_total,
            data_remaining=s.data_remaining,
            dirty_rate_bps=s.dirty_rate_bps,
            bandwidth_bps=s.bandwidth_bps,
            iteration=s.iteration,
            max_downtime_ms=state.max_downtime_ms,
            message=message,
        )
        self.last_progress = p
        if self.on_progress is not None:
            try:
                self.on_progress(p)
            except Exception:  # a broken observer must not break the migration
                log.exception("progress callback failed")

    def _delete_source_disks(self, paths: list[str]) -> list[str]:
        """After a non-shared migration: delete the now stale source volumes."""
        notes: list[str] = []
        conn = self.dom.connect()
        for path in paths:
            try:
                conn.storageVolLookupByPath(path).delete(0)
                notes.append(f"deleted source disk {path}")
            except libvirt.libvirtError as e:
                log.warning("%s: source disk %s left behind: %s", self.name, path, e)
                notes.append(f"leftover: source disk {path}")
        return notes

    def _completed(
        self,
        src_uri: str,
        total_ms: int,
        state: ScheduleState,
        actions: list[str],
        last_sample: JobSample | None,
    ) -> MigrationResult:
        """Read the completed job's stats (downtime) on the destination.

        After post-copy libvirt keeps no completed stats there: downtime stays None and the
        data figure is the last one polled.
        """
        downtime: int | None = None
        transferred = last_sample.data_processed if last_sample else 0
        conn = self._dest_conn
        opened = False
        try:
            if conn is None:
                conn = libvirt.open(self.dest_uri)
                opened = True
            # KEEP_COMPLETED: reading completed stats would otherwise discard them for others
            stats = conn.lookupByUUIDString(self.uuid).jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
            if stats.get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                sample = sample_from_stats(stats)
                downtime = sample.downtime_ms
                transferred = sample.data_processed or transferred
        except libvirt.libvirtError as e:
            log.warning("%s: no completed job stats on destination: %s", self.name, e)
        finally:
            if opened and conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        return MigrationResult(
            vm=self.name,
            source_uri=src_uri,
            dest_uri=self.dest_uri,
            mode="live",
            total_ms=total_ms,
            downtime_ms=downtime,
            data_transferred=transferred,
            postcopy=state.postcopy_started,
            max_downtime_ms=state.max_downtime_ms,
            actions=tuple(actions),
        )

    def _rollback(self, state: ScheduleState) -> str:
        """Make sure the VM runs on the source after a failed migration; say where it is."""
        st = _state(self.dom)
        if st is None:
            raise DriverError(
                f"VM {self.name} vanished from the source after a failed migration "
                f"to {self.dest_uri}; check the destination",
                details={"rollback": "source domain gone"},
            )
        code, reason = st
        if code == libvirt.VIR_DOMAIN_RUNNING:
            return "VM still running on the source"
        if code == libvirt.VIR_DOMAIN_PAUSED:
            if self._was_paused and not state.postcopy_started:
                return "VM still paused on the source, as before the migration"
            if state.postcopy_started:
                raise DriverError(
                    f"post-copy migration of {self.name} failed; VM paused on the source "
                    f"(reason {reason}) and needs recovery",
                    details={"rollback": "post-copy failed"},
                )
            try:
                self.dom.resume()
            except libvirt.libvirtError as e:
                raise DriverError(
                    f"VM {self.name} left paused on the source and resume failed: {e}",
                    details={"rollback": "resume failed"},
                ) from e
            return "VM was paused on the source and has been resumed"
        raise DriverError(
            f"after the failed migration VM {self.name} is "
            f"{_STATE_NAMES.get(code, str(code))} on the source",
            details={"rollback": "source not running"},
        )


def migrate_live(
    dom: libvirt.virDomain,
    dest_uri: str,
    options: LiveMigrationOptions | None = None,
    *,
    on_progress: ProgressFn | None = None,
    cancel: CancelSignal | None = None,
    dest_conn: libvirt.virConnect | None = None,
) -> MigrationResult:
    """Live-migrate ``dom`` to ``dest_uri`` and block until done; see ``LiveMigration``."""
    return LiveMigration(
        dom, dest_uri, options, on_progress=on_progress, cancel=cancel, dest_conn=dest_conn
    ).run()


# ------------------------------------------------------------------------------------- cold


def _file_disks(xml: str) -> list[Disk]:
    return [d for d in parse_domain(xml).devices.disks if d.type == "file" and d.source_file]


def _with_disk_paths(xml: str, new_paths: dict[str, str]) -> str:
    """The domain XML with disk sources replaced (old path -> new path).

    Edited in place on the parsed tree rather than rebuilt from the typed ``Domain``: that model
    skips elements it does not know (machine type, device addresses...), and a cold-migrated
    VM must come up on the target with the same virtual hardware.
    """
    root = etree.fromstring(xml.encode())
    for src in root.iterfind("devices/disk/source"):
        old = src.get("file")
        if old in new_paths:
            src.set("file", new_paths[old])
    return etree.tostring(root, encoding="unicode")


def _vol_xml(name: str) -> str:
    """An empty file for the upload stream to fill byte for byte.

    Created raw and empty on purpose: a pre-formatted qcow2 could be longer than the copy and
    leave stale bytes behind it. The pool re-reads the real format on refresh.
    """
    return to_string(StorageVolume(name=name, capacity_bytes=0, format="raw").build())


def _volume(vol: libvirt.virStorageVol) -> StorageVolume:
    return StorageVolume.parse_xml(vol.XMLDesc(0))


def copy_volume(
    src: libvirt.virStorageVol,
    dst: libvirt.virStorageVol,
    *,
    cancel: CancelSignal | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Stream ``src``'s bytes into ``dst`` (holes stay holes); returns the data bytes moved.

    ``on_bytes`` gets the position reached in the file (data and holes).
    """
    s_conn, d_conn = src.connect(), dst.connect()
    down = s_conn.newStream(0)
    up = d_conn.newStream(0)
    src.download(down, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    dst.upload(up, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    moved = 0
    position = 0  # data + holes, for progress against the physical size
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"copy of {src.path()} cancelled")
            data = down.recvFlags(_CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if isinstance(data, int):
                if data != -3:
                    raise DriverError(f"unexpected stream status {data} reading {src.path()}")
                hole = down.recvHole(0)  # a hole: forward its length
                up.sendHole(hole, 0)
                position += hole
            elif not data:
                break
            else:
                up.send(data)
                moved += len(data)
                position += len(data)
            if on_bytes is not None:
                on_bytes(position)
        down.finish()
        up.finish()
    except BaseException:
        for st in (down, up):
            with contextlib.suppress(libvirt.libvirtError):
                st.abort()
        raise
    return moved


def _stop(dom: libvirt.virDomain, timeout_s: float) -> str:
    """Graceful shutdown, forced after ``timeout_s``; returns how it stopped."""
    if not dom.isActive():
        return "already stopped"
    with contextlib.suppress(libvirt.libvirtError):
        dom.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not dom.isActive():
            return "shut down"
        time.sleep(0.1)
    with contextlib.suppress(libvirt.libvirtError):
        dom.destroy()
    if dom.isActive():
        raise DriverError(f"VM {dom.name()} did not stop")
    return "forced off"


def cold_migrate(
    dom: libvirt.virDomain,
    dest_conn: libvirt.virConnect,
    *,
    dest_pool: str = "",
    copy_storage: bool = True,
    shutdown_timeout_s: float = 30.0,
    start: bool | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelSignal | None = None,
) -> MigrationResult:
    """Move a (running or stopped) VM to ``dest_conn``'s host with a stop/copy/start.

    ``copy_storage``: copy every file disk into ``dest_pool`` (volumes of a source pool; a
    qcow2 backing file must already exist on the destination at the same path). Without it,
    every disk must already be visible on the destination at the same path (shared storage).
    ``start``: run it on the target (default: if it was running). Undo on any failure: target
    domain and copied volumes removed, the source restarted if it was running.
    """
    name, uuid = dom.name(), dom.UUIDString()
    src_conn = dom.connect()
    src_uri, dest_uri = src_conn.getURI(), dest_conn.getURI()
    t0 = time.monotonic()

    def emit(phase: Phase, percent: float, message: str = "") -> None:
        if on_progress is not None:
            try:
                on_progress(
                    MigrationProgress(
                        name, phase, percent, round(time.monotonic() - t0, 3), message=message
                    )
                )
            except Exception:
                log.exception("progress callback failed")

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cold migration of {name} cancelled")

    # ---- preflight: nothing changes yet
    for other in dest_conn.listAllDomains(0):
        if other.UUIDString() == uuid or other.name() == name:
            raise AlreadyExists(f"VM {name} ({uuid}) already defined on {dest_uri}")
    # path lookups on the destination see only what its pools last scanned
    for p in dest_conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        with contextlib.suppress(libvirt.libvirtError):
            p.refresh(0)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    disks = _file_disks(xml)
    plan: list[tuple[Disk, libvirt.virStorageVol]] = []
    pool = None
    if copy_storage:
        if not dest_pool:
            raise FailedPrecondition("copy_storage needs a destination pool", field="dest_pool")
        try:
            pool = dest_conn.storagePoolLookupByName(dest_pool)
        except libvirt.libvirtError as e:
            raise NotFound(f"pool {dest_pool} not on {dest_uri}", field="dest_pool") from e
        names = set(pool.listVolumes())
        for d in disks:
            try:
                vol = src_conn.storageVolLookupByPath(d.source_file)
            except libvirt.libvirtError as e:
                raise FailedPrecondition(
                    f"disk {d.target_dev} ({d.source_file}) is not a volume of a storage pool; "
                    "cannot copy it"
                ) from e
            if vol.name() in names:
                raise AlreadyExists(f"volume {vol.name()} already in pool {dest_pool}")
            info = _volume(vol)
            backing = info.backing_store.path if info.backing_store else ""
            if backing and not os.path.isabs(backing):
                raise FailedPrecondition(f"disk {d.source_file}: relative backing file {backing}")
            if backing:
                try:
                    dest_conn.storageVolLookupByPath(backing)
                except libvirt.libvirtError as e:
                    raise FailedPrecondition(
                        f"disk {d.source_file}: backing image {backing} is not on the destination"
                    ) from e
            plan.append((d, vol))
    else:
        for d in disks:
            try:
                dest_conn.storageVolLookupByPath(d.source_file)
            except libvirt.libvirtError as e:
                raise FailedPrecondition(
                    f"disk {d.target_dev} ({d.source_file}) is not visible on {dest_uri}; "
                    "use copy_storage or shared storage"
                ) from e

    was_running = bool(dom.isActive())
    run_on_target = was_running if start is None else start
    undo = UndoStack(f"cold migration of {name}", logger=log)
    downtime_t0 = time.monotonic()
    try:
        check_cancel()
        emit("precopy", 0.0, "stopping on source")
        how = _stop(dom, shutdown_timeout_s)
        if was_running:
            undo.push(dom.create, "restart the VM on the source")
        physical = libvirt.VIR_STORAGE_VOL_GET_PHYSICAL
        total = sum(vol.infoFlags(physical)[2] for _, vol in plan) or 1
        done = 0
        new_paths: dict[str, str] = {}
        for d, vol in plan:
            check_cancel()
            assert pool is not None
            dst = pool.createXML(_vol_xml(vol.name()), 0)
            undo.push(functools.partial(dst.delete, 0), f"delete {dst.path()} on the target")
            base = done

            def on_bytes(n: int, base: int = base, tgt: str = d.target_dev) -> None:
                emit("precopy", min(99.0, 100.0 * (base + n) / total), f"copying {tgt}")

            done += copy_volume(vol, dst, cancel=cancel, on_bytes=on_bytes)
            new_paths[d.source_file] = dst.path()
        if plan:
            assert pool is not None
            pool.refresh(0)
        check_cancel()
        new_dom = dest_conn.defineXML(_with_disk_paths(xml, new_paths))
        undo.push(new_dom.undefine, "undefine the VM on the target")
        if run_on_target:
            new_dom.create()
            undo.push(new_dom.destroy, "stop the VM on the target")
        downtime_ms = int((time.monotonic() - downtime_t0) * 1000) if was_running else None
    except BaseException as e:
        failures = undo.rollback()
        emit("failed" if not isinstance(e, Cancelled) else "cancelled", 0.0, str(e))
        err: BaseException = e
        if isinstance(e, libvirt.libvirtError):
            err = _map_libvirt_error(e, f"cold migration of {name} failed")
        if failures and isinstance(err, VmmgrError):
            err.details["undo_failed"] = "; ".join(f.description for f in failures)
        if err is e:
            raise
        raise err from e
    # ---- commit: the target runs; drop the source (failures here are reported, not undone)
    leftovers: list[str] = []
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError as e:
        leftovers.append(f"source definition ({e})")
    for _, vol in plan:
        try:
            vol.delete(0)
        except libvirt.libvirtError as e:
            leftovers.append(f"source volume {vol.path()} ({e})")
    total_ms = int((time.monotonic() - t0) * 1000)
    emit("completed", 100.0, how)
    if leftovers:
        log.warning("cold migration of %s done; leftovers on source: %s", name, leftovers)
    return MigrationResult(
        vm=name,
        source_uri=src_uri,
        dest_uri=dest_uri,
        mode="cold",
        total_ms=total_ms,
        downtime_ms=downtime_ms,
        data_transferred=done,
        actions=(how, *(f"leftover: {x}" for x in leftovers)),
    )
