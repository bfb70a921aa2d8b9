"""``LibvirtConnection``: vmmgr.ports.HostConnection over one libvirt URI.

Connection management: keepalive, a close callback that marks the connection dead and tells
``on_close`` listeners, and reconnect with backoff on the next use (or ``reconnect()``).
libvirt connection objects are thread-safe; the lock here guards only this object's own state.

Ownership: a domain is vmmgr's when its vmmgr metadata id equals its uuid (vm_id IS the libvirt
domain uuid). Every mutating call refuses other (foreign) domains with FailedPrecondition.

Per live libvirt connection (dropped with it) this object keeps storage pool handles and the
handles of domains it has seen carry vmmgr metadata, so the common create path (overlay,
seed, define, start) does not look them up and re-read their XML on every call.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import libvirt

from drivers.hypervisor.libvirt import storage
from drivers.hypervisor.libvirt.config import LibvirtConfig
from drivers.hypervisor.libvirt.dispatch import Dispatcher
from drivers.hypervisor.libvirt.errors import error_code, is_connection_error, map_libvirt_error
from drivers.hypervisor.libvirt.events import event_loop_barrier
from drivers.hypervisor.libvirt.states import CLOSE_REASONS, event_names, flatten_state
from drivers.hypervisor.libvirt.xml.builder import domain_xml_from_spec
from drivers.hypervisor.libvirt.xml.capabilities import HostCapabilities, cells_from_node_info
from drivers.hypervisor.libvirt.xml.domain import parse_domain, vmmgr_metadata
from vmmgr.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from vmmgr.ports import (
    DomainEvent,
    DomainInfo,
    DomainSpec,
    DomainState,
    HostInfo,
    HostNumaCell,
    VolumeInfo,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
#: the test driver (and older hypervisors) accept only these; tried when the full set is refused
_UNDEFINE_FLAGS_BASIC = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)
_TEST_DRIVER = "TEST"


def _version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def vm_uuid(vm_id: str) -> str:
    """The libvirt uuid for ``vm_id`` (they are the same, normalized); InvalidArgument if not."""
    try:
        return str(uuidlib.UUID(vm_id))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument("vm_id", f"not a UUID: {vm_id!r}") from None


class LibvirtConnection:
    """One host's libvirt connection. Built by ``LibvirtHypervisor.connect``."""

    def __init__(self, uri: str, *, host_name: str, config: LibvirtConfig) -> None:
        self.uri = uri
        self.host_name = host_name
        self._config = config
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._alive = False
        self._closed = False
        self._event_cb_id: int | None = None
        self._nodedev_cb_id: int | None = None
        self._nodedev_listeners: list[Callable[[str], None]] = []
        self._backoff_s = config.reconnect_min_backoff_s
        self._next_attempt = 0.0
        self._last_error = ""
        self._caps: HostCapabilities | None = None
        self._event_listeners: list[Callable[[DomainEvent], None]] = []
        self._close_listeners: list[Callable[[str], None]] = []
        self._owned: dict[str, str | None] = {}  # uuid -> vm_id (None: foreign), for events
        # The caches below hold handles of the current libvirt connection; _discard clears them.
        self._pools: dict[str, libvirt.virStoragePool] = {}
        # uuid -> handle of a domain seen carrying vmmgr metadata (we defined it, or read its
        # XML); dropped when it is undefined or seen without metadata (see _owned_domain).
        self._mine: dict[str, libvirt.virDomain] = {}
        # (uuid, lifecycle event): how many our calls caused that libvirt has not told yet
        self._causing: collections.Counter[tuple[str, int]] = collections.Counter()
        self._causing_lock = threading.Lock()
        self._dispatcher = Dispatcher(f"libvirt-events-{host_name}")

    # ------------------------------------------------------------------ connection state

    def open(self) -> None:
        """Open now; Unavailable if the URI cannot be reached."""
        with self._lock:
            self._closed = False
            self._discard()
            self._open()

    def alive(self) -> bool:
        with self._lock:
            conn = self._conn if self._alive and not self._closed else None
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def reconnect(self) -> None:
        """Drop the current connection and open a new one now, ignoring the backoff."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"connection to {self.uri} was closed")
            self._discard()
            self._open()

    def close(self) -> None:
        """Close for good (no listeners are told; they asked). Never raises."""
        with self._lock:
            self._closed = True
            self._discard()
        self._dispatcher.stop()

    @property
    def virconn(self) -> libvirt.virConnect:
        """The live libvirt connection (reconnecting if needed), for driver code such as
        migration that needs raw libvirt calls. Unavailable when it cannot be had."""
        return self._virconn()

    def drain_events(self, timeout_s: float = 5.0) -> bool:
        """Wait until the events libvirt has queued in this process so far reached the
        listeners (tests, orderly shutdown). Events still in flight from a remote daemon are
        not waited for. False on timeout."""
        return event_loop_barrier(timeout_s) and self._dispatcher.drain(timeout_s)

    def _open(self) -> None:
        """Open and wire callbacks; caller holds the lock."""
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:  # whatever the cause, the host cannot be used now
            self._failed(e)
            raise Unavailable(
                f"connect to {self.uri}: {e.get_error_message() or e}",
                details={"libvirt_code": str(e.get_error_code())},
            ) from e
        if conn is None:  # old bindings returned None instead of raising
            raise Unavailable(f"connect to {self.uri}: libvirt returned no connection")
        try:
            self._set_keepalive(conn)
            conn.registerCloseCallback(self._on_libvirt_close, None)
            self._event_cb_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            self._nodedev_cb_id = self._register_nodedev_events(conn)
        except libvirt.libvirtError as e:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            self._failed(e)
            raise map_libvirt_error(e, f"connect to {self.uri}") from e
        self._conn, self._alive, self._caps = conn, True, None
        self._backoff_s = self._config.reconnect_min_backoff_s
        self._next_attempt, self._last_error = 0.0, ""

    def _set_keepalive(self, conn: libvirt.virConnect) -> None:
        """Best effort: without keepalive a dead peer is noticed later, not never (EOF still
        closes). test:// and other local drivers answer "not supported"."""
        try:
            conn.setKeepAlive(self._config.keepalive_interval_s, self._config.keepalive_count)
        except libvirt.libvirtError as e:
            if error_code(e) != libvirt.VIR_ERR_NO_SUPPORT:
                log.warning("keepalive not enabled on %s: %s", self.uri, e)

    def _failed(self, err: libvirt.libvirtError) -> None:
        self._conn, self._alive = None, False
        self._last_error = err.get_error_message() or str(err)
        self._next_attempt = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._config.reconnect_max_backoff_s)

    def _discard(self) -> None:
        """Unhook and close the current libvirt connection, if any; caller holds the lock."""
        conn, self._conn, self._alive = self._conn, None, False
        # handles belong to that connection, and events may be missed until the next one
        self._pools.clear()
        self._mine.clear()
        self._causing.clear()
        if conn is None:
            return
        if self._event_cb_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(self._event_cb_id)
            self._event_cb_id = None
        if self._nodedev_cb_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.nodeDeviceEventDeregisterAny(self._nodedev_cb_id)
            self._nodedev_cb_id = None
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _virconn(self) -> libvirt.virConnect:
        with self._lock:
            if self._closed:
                raise Unavailable(f"connection to {self.uri} was closed")
            if self._conn is not None and self._alive:
                return self._conn
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                raise Unavailable(
                    f"{self.uri} unreachable ({self._last_error or 'connection lost'}); "
                    f"next reconnect attempt in {wait:.1f}s"
                )
            self._discard()
            self._open()
            assert self._conn is not None
            return self._conn

    @contextmanager
    def _libvirt(self, action: str) -> Iterator[libvirt.virConnect]:
        """A live connection for a block of libvirt calls; libvirtError leaves as a vmmgr
        error, and a transport error marks the connection dead (the next use reconnects)."""
        conn = self._virconn()
        try:
            yield conn
        except libvirt.libvirtError as e:
            if is_connection_error(e):
                self._mark_dead(conn, e)
            raise map_libvirt_error(e, action) from e

    def _mark_dead(self, conn: libvirt.virConnect, err: libvirt.libvirtError) -> None:
        with self._lock:
            if conn is self._conn:
                self._alive = False
                self._last_error = err.get_error_message() or str(err)

    # ------------------------------------------------------------------ libvirt callbacks

    def _on_libvirt_close(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        """libvirt's close callback (event loop thread): mark dead, tell listeners later.

        Deliberately lock-free: libvirt holds its close-callback lock while calling this, and
        ``_discard`` (under our lock) unregisters the callback, which needs that lock; taking
        our lock here could deadlock. Single attribute stores are atomic under the GIL.
        """
        name = CLOSE_REASONS.get(reason, str(reason))
        current = self._conn
        if current is not None and conn is not current:
            return  # a connection we already replaced
        self._alive = False
        self._last_error = f"connection closed ({name})"
        listeners = list(self._close_listeners)
        log.warning("libvirt connection %s closed: %s", self.uri, name)
        for listener in listeners:
            self._dispatcher.submit(functools.partial(listener, name))

    def _on_lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _o: object
    ) -> None:
        """libvirt's lifecycle callback (event loop thread): only read local fields, enqueue.
        An event that a call of this connection caused is dropped (see ``_own_event``)."""
        uuid = dom.UUIDString()
        if self._unmark(uuid, event):
            return
        name = dom.name()
        observed = time.monotonic()
        self._dispatcher.submit(lambda: self._emit(dom, uuid, name, event, detail, observed))

    @contextmanager
    def _own_event(self, uuid: str, event: int) -> Iterator[None]:
        """Around a call that makes libvirt emit ``event`` for domain ``uuid``: that event is
        not reported, because the caller records the outcome itself, and every create would
        otherwise hand two events to the dispatcher thread just to be ignored. Marked before
        the call (the event may arrive before it returns); unmarked if the call fails."""
        with self._causing_lock:
            self._causing[uuid, event] += 1
        try:
            yield
        except BaseException:
            self._unmark(uuid, event)
            raise

    def _unmark(self, uuid: str, event: int) -> bool:
        """Take one mark of ``event`` on ``uuid``; whether there was one."""
        key = (uuid, event)
        with self._causing_lock:
            left = self._causing.pop(key, 0) - 1
            if left > 0:
                self._causing[key] = left
            return left >= 0

    def _register_nodedev_events(self, conn: libvirt.virConnect) -> int | None:
        """Node device lifecycle events (a GPU or an mdev appears or goes): best effort, some
        drivers do not offer them."""
        try:
            return int(
                conn.nodeDeviceEventRegisterAny(
                    None, libvirt.VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE, self._on_nodedev, None
                )
            )
        except libvirt.libvirtError as e:
            log.info("no node device events from %s: %s", self.uri, e)
            return None

    def _on_nodedev(
        self,
        _conn: libvirt.virConnect,
        dev: libvirt.virNodeDevice,
        event: int,
        detail: int,
        _o: object,
    ) -> None:
        name = dev.name()
        with self._lock:
            listeners = list(self._nodedev_listeners)
        for listener in listeners:
            self._dispatcher.submit(functools.partial(listener, name))

    def _emit(
        self,
        dom: libvirt.virDomain,
        uuid: str,
        name: str,
        event: int,
        detail: int,
        observed: float,
    ) -> None:
        reason, detail_name, state = event_names(event, detail)
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            vm_id = self._owned.get(uuid)
            self._mine.pop(uuid, None)
        elif event == libvirt.VIR_DOMAIN_EVENT_DEFINED or uuid not in self._owned:
            # (DEFINED: someone else redefined it, ours are dropped on arrival)
            vm_id = self._read_vm_id(dom, uuid)
        else:
            vm_id = self._owned[uuid]
        if state is None:
            state = self._read_state(dom)
        evt = DomainEvent(
            host=self.host_name,
            uuid=uuid,
            name=name,
            vm_id=vm_id,
            state=state,
            reason=reason,
            detail=detail_name,
            observed=observed,
        )
        with self._lock:
            listeners = list(self._event_listeners)
        for listener in listeners:
            try:
                listener(evt)
            except Exception:
                log.exception("domain event listener failed for %s", evt)

    def _read_vm_id(self, dom: libvirt.virDomain, uuid: str) -> str | None:
        try:
            meta = vmmgr_metadata(dom.XMLDesc(0))
        except libvirt.libvirtError:
            return self._owned.get(uuid)  # gone already: the best we know
        vm_id = meta[0] if meta else None
        self._saw(uuid, vm_id)
        return vm_id

    def _saw(self, uuid: str, vm_id: str | None) -> None:
        """Record what domain ``uuid``'s metadata said just now (None: foreign)."""
        self._owned[uuid] = vm_id
        if vm_id is None:
            self._mine.pop(uuid, None)

    def _keep(self, conn: libvirt.virConnect, uuid: str, dom: libvirt.virDomain) -> None:
        """Remember ``dom`` (of ``conn``), just seen carrying vmmgr metadata."""
        self._owned[uuid] = uuid
        with self._lock:
            if conn is self._conn:
                self._mine[uuid] = dom

    @staticmethod
    def _read_state(dom: libvirt.virDomain) -> DomainState:
        try:
            return flatten_state(dom.state()[0])
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState.STOPPED
            return DomainState.UNKNOWN

    # ------------------------------------------------------------------ listeners

    def on_node_device_event(self, callback: Callable[[str], None]) -> None:
        """``callback(nodedev_name)`` whenever a node device is created, deleted or changed."""
        with self._lock:
            self._nodedev_listeners.append(callback)

    def on_domain_event(self, callback: Callable[[DomainEvent], None]) -> None:
        with self._lock:
            self._event_listeners.append(callback)

    def on_close(self, callback: Callable[[str], None]) -> None:
        """``callback(reason)`` when libvirt reports the connection lost: "eof" (the daemon
        went away), "keepalive" (no answer), "error", "client"."""
        with self._lock:
            self._close_listeners.append(callback)

    # ------------------------------------------------------------------ host

    def capabilities(self) -> HostCapabilities:
        """Parsed host capabilities (cached per connection), with NUMA cells derived from
        virNodeGetInfo when libvirt lists none (test driver on a custom node file)."""
        with self._libvirt("read host capabilities") as conn:
            return self._capabilities(conn)

    def _capabilities(self, conn: libvirt.virConnect) -> HostCapabilities:
        with self._lock:
            if self._caps is not None and conn is self._conn:
                return self._caps
        caps = HostCapabilities.from_xml(conn.getCapabilities())
        if not caps.cells:
            info = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
            caps = caps.with_cells(cells_from_node_info(info[4], info[2], info[1] * 1024))
        with self._lock:
            if conn is self._conn:
                self._caps = caps
        return caps

    def host_info(self) -> HostInfo:
        with self._libvirt(f"read host info of {self.uri}") as conn:
            caps = self._capabilities(conn)
            info = conn.getInfo()
            hv_type = conn.getType()
            domain_types = caps.domain_types
            if hv_type == _TEST_DRIVER:
                # the test driver defines domains of any type; its capabilities say only "test"
                domain_types = tuple(sorted({"kvm", "qemu", *domain_types}))
            return HostInfo(
                hostname=conn.getHostname(),
                # test hosts have no host uuid: derive a stable one from the URI
                host_uuid=caps.uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, self.uri)),
                arch=caps.arch or str(info[0]),
                cpus=int(info[2]),
                memory_mib=int(info[1]),
                numa_cells=tuple(
                    HostNumaCell(id=c.id, cpus=len(c.cpu_ids), memory_mib=c.memory_kib // 1024)
                    for c in caps.cells
                ),
                hypervisor=hv_type,
                hypervisor_version=_version(conn.getVersion()),
                libvirt_version=_version(conn.getLibVersion()),
                domain_types=domain_types,
            )

    def list_node_device_xml(self) -> list[str]:
        with self._libvirt("list node devices") as conn:
            out = []
            for dev in conn.listAllDevices(0):
                try:
                    out.append(dev.XMLDesc(0))
                except libvirt.libvirtError as e:  # removed between list and read
                    if error_code(e) != libvirt.VIR_ERR_NO_NODE_DEVICE:
                        raise
            return out

    # ------------------------------------------------------------------ domains

    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        xml = dom.XMLDesc(0)
        parsed = parse_domain(xml)
        meta = vmmgr_metadata(xml)
        vm_id, owner = meta if meta is not None else (None, "")
        self._saw(parsed.uuid, vm_id)
        mem = parsed.current_memory.kib if parsed.current_memory else parsed.memory.kib
        return DomainInfo(
            uuid=parsed.uuid,
            name=parsed.name,
            state=flatten_state(dom.state()[0]),
            vm_id=vm_id,
            owner=owner,
            vcpus=parsed.vcpu.count,
            memory_mib=mem // 1024,
            persistent=bool(dom.isPersistent()),
        )

    @staticmethod
    def _find(conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _owned_domain(self, conn: libvirt.virConnect, vm_id: str) -> libvirt.virDomain:
        """The vmmgr domain ``vm_id``: NotFound if absent, FailedPrecondition if foreign.

        A domain this connection defined or already checked comes from ``_mine`` without a
        lookup or XML read. libvirt resolves a domain handle by uuid on every call, so the
        handle acts on whatever now has that uuid (NotFound once it is gone); the entry is
        dropped by the UNDEFINED event, by a DEFINED event whose XML has no vmmgr metadata
        and by a reconnect (events may have been missed): a foreign domain is taken for ours
        only until this connection has processed the events that made it so.
        """
        uuid = vm_uuid(vm_id)
        with self._lock:
            cached = self._mine.get(uuid) if conn is self._conn else None
        if cached is not None:
            return cached
        dom = self._find(conn, uuid)
        if dom is None:
            raise NotFound(f"no domain {uuid} on {self.host_name}")
        if vmmgr_metadata(dom.XMLDesc(0)) is None:
            self._saw(uuid, None)
            raise FailedPrecondition(
                f"domain {dom.name()!r} ({uuid}) on {self.host_name} has no vmmgr metadata: "
                "foreign domains are never touched"
            )
        self._keep(conn, uuid, dom)
        return dom

    def lookup_domain(self, vm_id: str) -> libvirt.virDomain:
        """The libvirt domain object of a vmmgr domain (for driver code: migration...)."""
        with self._libvirt(f"look up vm {vm_id}") as conn:
            return self._owned_domain(conn, vm_id)

    def list_domains(self) -> list[DomainInfo]:
        with self._libvirt(f"list domains on {self.host_name}") as conn:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    out.append(self._info(dom))
                except libvirt.libvirtError as e:  # undefined between list and read
                    if error_code(e) != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return sorted(out, key=lambda d: d.name)

    def get_domain(self, vm_id: str) -> DomainInfo | None:
        """The domain with uuid ``vm_id``, None if there is none; a foreign domain with that
        uuid comes back with ``vm_id=None``."""
        uuid = vm_uuid(vm_id)
        with self._libvirt(f"get vm {uuid}") as conn:
            dom = self._find(conn, uuid)
            if dom is None:
                return None
            try:
                return self._info(dom)
            except libvirt.libvirtError as e:
                if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

    def define(self, spec: DomainSpec, *, new: bool = False) -> DomainInfo:
        """Define (or redefine) the vmmgr domain for ``spec``; the domain uuid is spec.vm_id.
        ``new``: that uuid was just generated (a create), so the look-up for a foreign domain
        holding it is skipped: one libvirt call fewer."""
        uuid = vm_uuid(spec.vm_id)
        with self._libvirt(f"define vm {uuid}") as conn:
            xml = domain_xml_from_spec(
                spec,
                self._capabilities(conn),
                cpu_mode=self._config.cpu_mode,
                machine=self._config.machine,
            )
            # defineXML overwrites a domain with the same uuid AND name, so a foreign one must
            # be caught first; a name taken by another uuid libvirt refuses itself (below)
            existing = None if new else self._find(conn, uuid)
            if existing is not None and vmmgr_metadata(existing.XMLDesc(0)) is None:
                raise FailedPrecondition(
                    f"a foreign domain {existing.name()!r} already has uuid {uuid}"
                )
            try:
                with self._own_event(uuid, libvirt.VIR_DOMAIN_EVENT_DEFINED):
                    dom = conn.defineXML(xml)
            except libvirt.libvirtError as e:
                # "already exists with uuid" comes as plain OPERATION_FAILED: look, not parse
                if not is_connection_error(e):
                    taken_by = self._name_taken_by(conn, spec.name, uuid)
                    if taken_by is not None:
                        raise AlreadyExists(
                            f"domain name {spec.name!r} is taken on {self.host_name} "
                            f"by {taken_by}",
                            field="name",
                        ) from e
                raise
            self._keep(conn, uuid, dom)
            if existing is not None:  # a redefinition: it may be running; read what it is
                return self._info(dom)
            return DomainInfo(  # new and persistent, so stopped; the rest is what we wrote
                uuid=uuid,
                name=spec.name,
                state=DomainState.STOPPED,
                vm_id=uuid,
                owner=spec.owner,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                persistent=True,
            )

    @staticmethod
    def _name_taken_by(conn: libvirt.virConnect, name: str, uuid: str) -> str | None:
        """The uuid of another domain named ``name``, None if there is none."""
        try:
            other = str(conn.lookupByName(name).UUIDString())
        except libvirt.libvirtError as e:
            if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return other if other != uuid else None

    def undefine(self, vm_id: str) -> None:
        """Remove a stopped vmmgr domain's definition (managed save, snapshot metadata and
        NVRAM with it). FailedPrecondition while it runs: destroy it first."""
        with self._libvirt(f"undefine vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            self._mine.pop(vm_uuid(vm_id), None)
            if dom.isActive():
                raise FailedPrecondition(f"vm {vm_id} is running; stop it before undefining")
            with self._own_event(vm_uuid(vm_id), libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
                try:
                    dom.undefineFlags(_UNDEFINE_FLAGS)
                except libvirt.libvirtError as e:
                    if error_code(e) not in (
                        libvirt.VIR_ERR_INVALID_ARG,
                        libvirt.VIR_ERR_NO_SUPPORT,
                    ):
                        raise
                    dom.undefineFlags(_UNDEFINE_FLAGS_BASIC)

    def start(self, vm_id: str) -> None:
        """Start a stopped vmmgr domain; FailedPrecondition if it is already running."""
        with self._libvirt(f"start vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            try:
                with self._own_event(vm_uuid(vm_id), libvirt.VIR_DOMAIN_EVENT_STARTED):
                    dom.create()
            except libvirt.libvirtError as e:
                # qemu says OPERATION_INVALID, the test driver INTERNAL_ERROR: ask, not parse
                if self._is_active(dom):
                    raise FailedPrecondition(f"vm {vm_id} is already running") from e
                raise

    @staticmethod
    def _is_active(dom: libvirt.virDomain) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    def shutdown(self, vm_id: str, timeout_s: float) -> bool:
        """Ask the guest to power off (ACPI); poll until it stopped or ``timeout_s`` passed.
        True if stopped (or not running to begin with); on False the caller destroys."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._libvirt(f"shut down vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            if not dom.isActive():
                return True
            try:
                dom.shutdown()
            except libvirt.libvirtError as e:
                if error_code(e) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                    raise
                return True  # it stopped on its own in between
            while True:
                try:
                    if dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF:
                        return True
                except libvirt.libvirtError as e:
                    if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
                        return True  # a transient domain is gone once stopped
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(self._config.shutdown_poll_s, left))

    def destroy(self, vm_id: str) -> None:
        """Hard power-off. A domain that is not running is left as it is (idempotent)."""
        with self._libvirt(f"destroy vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            try:
                # Its STOPPED event is reported: qemu also reports the kill as a SHUTDOWN event,
                # which the listeners may handle after the caller recorded the outcome, and the
                # STOPPED that follows it is what settles the state then.
                dom.destroy()
            except libvirt.libvirtError as e:
                if error_code(e) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                    raise

    def reboot(self, vm_id: str) -> None:
        with self._libvirt(f"reboot vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            self._require_state(dom, vm_id, "reboot", libvirt.VIR_DOMAIN_RUNNING)
            dom.reboot(0)

    def suspend(self, vm_id: str) -> None:
        with self._libvirt(f"suspend vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            self._require_state(dom, vm_id, "suspend", libvirt.VIR_DOMAIN_RUNNING)
            with self._own_event(vm_uuid(vm_id), libvirt.VIR_DOMAIN_EVENT_SUSPENDED):
                dom.suspend()

    def resume(self, vm_id: str) -> None:
        with self._libvirt(f"resume vm {vm_id}") as conn:
            dom = self._owned_domain(conn, vm_id)
            self._require_state(dom, vm_id, "resume", libvirt.VIR_DOMAIN_PAUSED)
            with self._own_event(vm_uuid(vm_id), libvirt.VIR_DOMAIN_EVENT_RESUMED):
                dom.resume()

    @staticmethod
    def _require_state(dom: libvirt.virDomain, vm_id: str, action: str, wanted: int) -> None:
        state = dom.state()[0]
        if state != wanted and not (
            wanted == libvirt.VIR_DOMAIN_RUNNING and state == libvirt.VIR_DOMAIN_BLOCKED
        ):
            raise FailedPrecondition(
                f"cannot {action} vm {vm_id}: it is {flatten_state(state).value}, "
                f"not {flatten_state(wanted).value}"
            )

    def domain_xml(self, vm_id: str) -> str:
        """libvirt's XML of the domain with uuid ``vm_id`` (foreign ones too: reading is
        not touching)."""
        uuid = vm_uuid(vm_id)
        with self._libvirt(f"read XML of vm {uuid}") as conn:
            dom = self._find(conn, uuid)
            if dom is None:
                raise NotFound(f"no domain {uuid} on {self.host_name}")
            return str(dom.XMLDesc(0))

    # ------------------------------------------------------------------ storage

    def _on_pool(
        self,
        action: str,
        pool_name: str,
        op: Callable[[libvirt.virConnect, libvirt.virStoragePool], T],
    ) -> T:
        """``op(conn, pool)`` on storage pool ``pool_name``, through a cached handle.

        libvirt resolves a pool handle by uuid: one whose pool was undefined and defined again
        answers VIR_ERR_NO_STORAGE_POOL (qemu's storage driver; the test driver goes by name).
        Then the handle is dropped and ``op`` runs again on a fresh lookup. Each ``op`` here
        makes its first pool call before it changes anything; the only later one (the look-up
        after a qcow2 upload) fails so only if the pool was replaced during the upload, and
        then the retry imports into the pool that is there now.
        """
        with self._libvirt(action) as conn:
            with self._lock:
                pool = self._pools.get(pool_name) if conn is self._conn else None
            if pool is not None:
                try:
                    return op(conn, pool)
                except libvirt.libvirtError as e:
                    if error_code(e) != libvirt.VIR_ERR_NO_STORAGE_POOL:
                        raise
                with self._lock:
                    if self._pools.get(pool_name) is pool:
                        del self._pools[pool_name]
            pool = storage.lookup_pool(conn, pool_name)
            with self._lock:
                if conn is self._conn:
                    self._pools[pool_name] = pool
            return op(conn, pool)

    def ensure_pool(self, name: str, path: str) -> None:
        with self._libvirt(f"ensure storage pool {name}") as conn:
            with self._lock:
                self._pools.pop(name, None)  # it may be defined anew
            storage.ensure_pool(conn, name, path)

    def import_volume(self, pool: str, name: str, source_path: str) -> VolumeInfo:
        return self._on_pool(
            f"import {source_path} as {pool}/{name}",
            pool,
            lambda conn, p: storage.upload_volume(conn, p, pool, name, source_path),
        )

    def get_volume(self, pool: str, name: str) -> VolumeInfo | None:
        return self._on_pool(
            f"get volume {pool}/{name}", pool, lambda _c, p: storage.get_volume(p, pool, name)
        )

    def create_raw_volume(self, pool: str, name: str, capacity_bytes: int) -> VolumeInfo:
        return self._on_pool(
            f"create volume {pool}/{name}",
            pool,
            lambda _c, p: storage.create_raw_volume(p, pool, name, capacity_bytes),
        )

    def write_volume(self, pool: str, name: str, source_path: str) -> None:
        self._on_pool(
            f"write {source_path} into {pool}/{name}",
            pool,
            lambda conn, p: storage.write_volume(conn, p, name, source_path),
        )

    def has_volume(self, pool: str, name: str) -> bool:
        return self._on_pool(
            f"look up volume {pool}/{name}",
            pool,
            lambda _c, p: storage.lookup_volume(p, name) is not None,
        )

    def create_overlay(
        self, pool: str, name: str, backing: VolumeInfo, capacity_bytes: int
    ) -> VolumeInfo:
        return self._on_pool(
            f"create overlay {pool}/{name}",
            pool,
            lambda _c, p: storage.create_overlay(p, pool, name, backing, capacity_bytes),
        )

    def delete_volume(self, pool: str, name: str) -> None:
        self._on_pool(
            f"delete volume {pool}/{name}", pool, lambda _c, p: storage.delete_volume(p, name)
        )

    def list_volumes(self, pool: str) -> list[VolumeInfo]:
        return self._on_pool(
            f"list volumes of {pool}", pool, lambda _c, p: storage.list_volumes(p, pool)
        )
