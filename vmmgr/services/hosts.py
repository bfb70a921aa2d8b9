"""Hosts: registration by libvirt URI, inventory from capabilities, up / down / maintenance."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from sqlmodel import select

from vmmgr.config import Config
from vmmgr.errors import AlreadyExists, InvalidArgument, Unavailable, VmmgrError
from vmmgr.ports import DomainInfo, HostConnection
from vmmgr.requests import HOST_NAME_RE, LABEL_KEY_RE, check_name, check_text
from vmmgr.services.connections import ConnectionManager
from vmmgr.services.events import EventBus
from vmmgr.state import Store
from vmmgr.state.models import VM, Host, HostStatus, VMState
from vmmgr.state.repo import hosts as host_repo

log = logging.getLogger(__name__)

URI_SCHEMES = (
    "qemu",
    "qemu+ssh",
    "qemu+tcp",
    "qemu+tls",
    "qemu+unix",
    "qemu+libssh2",
    "qemu+libssh",
    "test",
)
AGENT_RE = re.compile(r"^[A-Za-z0-9.:\[\]_-]{1,255}$")


def validate_uri(uri: str) -> None:
    if not uri:
        raise InvalidArgument("uri", "is required")
    check_text("uri", uri, 1024)
    parts = urlsplit(uri)
    if parts.scheme not in URI_SCHEMES:
        raise InvalidArgument(
            "uri", f"scheme {parts.scheme!r} is not one of {', '.join(URI_SCHEMES)}"
        )
    if any(c.isspace() for c in uri):
        raise InvalidArgument("uri", "must not contain white space")


def validate_tags(tags: Sequence[str], field: str = "tags") -> None:
    for i, tag in enumerate(tags):
        if not LABEL_KEY_RE.match(tag):
            raise InvalidArgument(f"{field}[{i}]", f"{tag[:80]!r} is not a valid tag")


class HostService:
    def __init__(
        self, store: Store, conns: ConnectionManager, events: EventBus, config: Config
    ) -> None:
        self.store = store
        self.conns = conns
        self.events = events
        self.config = config
        # called with the host name after a registration (device inventory hooks in here)
        self.on_registered: list[Callable[[str], object]] = []

    def load(self) -> None:
        """Put every registered host under the connection manager (daemon start)."""
        with self.store.read_session() as s:
            for h in host_repo.list_hosts(s):
                self.conns.add(h.name, h.uri)

    def register(
        self,
        name: str,
        uri: str,
        *,
        tags: Sequence[str] = (),
        pool: str = "",
        agent_address: str = "",
    ) -> Host:
        check_name("name", name, regex=HOST_NAME_RE)
        validate_uri(uri)
        validate_tags(tags)
        if pool:
            check_name("pool", pool)
        if agent_address and not AGENT_RE.match(agent_address):
            raise InvalidArgument("agent_address", "must be host:port")
        with self.store.read_session() as s:
            existing = s.get(Host, name)
        if existing is not None:
            if existing.uri != uri:
                raise AlreadyExists(
                    f"host {name!r} is registered with another URI ({existing.uri})", field="name"
                )
            return existing
        try:
            conn = self.conns.probe(name, uri)
        except VmmgrError as exc:
            raise Unavailable(f"cannot connect to {uri}: {exc.message}", field="uri") from exc
        try:
            info = conn.host_info()
            self._ensure_pools(conn)
        finally:
            conn.close()
        with self.store.session() as s:
            host_repo.add_host(
                s,
                Host(
                    name=name,
                    uri=uri,
                    tags=list(tags),
                    pool=pool or "default",
                    agent_address=agent_address,
                ),
            )
            host = host_repo.record_host_facts(s, name, info)
        self.conns.add(name, uri)
        for hook in self.on_registered:
            try:
                hook(name)
            except VmmgrError as exc:
                log.warning("host %s registered, but %s failed: %s", name, hook, exc)
        self.events.publish(
            "host.registered",
            name,
            f"host {name} registered ({uri})",
            uri=uri,
            cpus=info.cpus,
            memory_mib=info.memory_mib,
        )
        return host

    def _ensure_pools(self, conn: HostConnection) -> None:
        conn.ensure_pool(self.config.image_pool, self.config.image_pool_path)
        conn.ensure_pool(self.config.vm_pool, self.config.vm_pool_path)

    def get(self, name: str) -> Host:
        if not name:
            raise InvalidArgument("name", "is required")
        with self.store.read_session() as s:
            return host_repo.get_host(s, name)

    def list_hosts(self, state: str = "") -> list[Host]:
        with self.store.read_session() as s:
            return host_repo.list_hosts(s, state=state or None)

    def update(
        self,
        name: str,
        *,
        tags: Sequence[str] | None = None,
        pool: str = "",
        agent_address: str = "",
    ) -> Host:
        self.get(name)
        changes: dict[str, object] = {}
        if tags is not None:
            validate_tags(tags)
            changes["tags"] = list(tags)
        if pool:
            check_name("pool", pool)
            changes["pool"] = pool
        if agent_address:
            if not AGENT_RE.match(agent_address):
                raise InvalidArgument("agent_address", "must be host:port")
            changes["agent_address"] = agent_address
        with self.store.session() as s:
            return host_repo.update_host(s, name, changes)

    def remove(self, name: str) -> None:
        self.get(name)
        with self.store.session() as s:
            host_repo.delete_host(s, name)
        self.conns.remove(name)
        self.events.publish("host.removed", name, f"host {name} removed")

    def foreign_domains(self, name: str) -> list[DomainInfo]:
        self.get(name)
        return [d for d in self.conns.get(name).list_domains() if d.vm_id is None]

    def set_maintenance(self, name: str, on: bool) -> Host:
        host = self.get(name)
        state = host.state
        if host.state != HostStatus.DOWN.value:
            state = (HostStatus.MAINTENANCE if on else HostStatus.UP).value
        with self.store.session() as s:
            host = host_repo.update_host(s, name, {"maintenance": on, "state": state})
        self.events.publish("host.state", name, f"host {name} is {host.state}", state=host.state)
        return host

    # ---- connection manager callbacks

    def connection_up(self, name: str) -> None:
        """A (re)connection: refresh facts; the host is up (or stays in maintenance)."""
        try:
            conn = self.conns.get(name)
            info = conn.host_info()
            self._ensure_pools(conn)  # a fresh libvirtd (or test driver) may lack them
        except VmmgrError as exc:
            log.warning("host %s: cannot read facts: %s", name, exc)
            return
        with self.store.session() as s:
            before = s.get(Host, name)
            if before is None:
                return
            was = before.state
            host = host_repo.record_host_facts(s, name, info)
        if was != host.state:
            self.events.publish(
                "host.state", name, f"host {name} is {host.state}", state=host.state
            )

    def connection_down(self, name: str, error: str) -> None:
        with self.store.session() as s:
            before = s.get(Host, name)
            if before is None or before.state == HostStatus.DOWN.value:
                return
            host_repo.mark_host_down(s, name, error)
            for vm in s.exec(select(VM).where(VM.host == name)):
                if vm.state in (
                    VMState.RUNNING.value,
                    VMState.PAUSED.value,
                    VMState.STOPPED.value,
                    VMState.SHUTTING_DOWN.value,
                ):
                    vm.state = VMState.UNKNOWN.value
                    vm.state_reason = f"host {name} unreachable"
        self.events.publish(
            "host.state",
            name,
            f"host {name} is down: {error}",
            severity="warning",
            state="down",
            error=error,
        )
