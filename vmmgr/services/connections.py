"""Keeps one live hypervisor connection per host; reconnects with backoff on the next use."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from vmmgr.errors import NotFound, Unavailable, VmmgrError
from vmmgr.ports import DomainEvent, HostConnection, Hypervisor

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    uri: str
    conn: HostConnection | None = None
    next_attempt: float = 0.0
    backoff_s: float = 0.0
    last_error: str = ""


class ConnectionManager:
    """Host name -> connection. ``get`` returns a live connection or raises Unavailable.

    Connection loss (libvirt keepalive or EOF) is reported through ``on_down``; the next ``get``
    after the backoff reconnects and reports ``on_up``. Domain events of every host go to
    ``on_event``.
    """

    MAX_BACKOFF_S = 30.0

    def __init__(
        self,
        hypervisor: Hypervisor,
        on_event: Callable[[DomainEvent], None],
        on_up: Callable[[str], None],
        on_down: Callable[[str, str], None],
        on_devices_changed: Callable[[str], None] = lambda host: None,
    ) -> None:
        self._hv = hypervisor
        self._on_event = on_event
        self._on_up = on_up
        self._on_down = on_down
        self._on_devices_changed = on_devices_changed
        self._lock = threading.RLock()
        self._hosts: dict[str, _Entry] = {}

    def add(self, name: str, uri: str) -> None:
        with self._lock:
            if name not in self._hosts or self._hosts[name].uri != uri:
                self._hosts[name] = _Entry(uri)

    def remove(self, name: str) -> None:
        with self._lock:
            entry = self._hosts.pop(name, None)
        if entry and entry.conn:
            entry.conn.close()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._hosts)

    def probe(self, name: str, uri: str) -> HostConnection:
        """Open a fresh connection that is not managed (used to validate a registration)."""
        return self._hv.connect(uri, host_name=name)

    def get(self, name: str, *, force: bool = False) -> HostConnection:
        with self._lock:
            entry = self._hosts.get(name)
            if entry is None:
                raise NotFound(f"host {name!r} is not registered")
            if entry.conn is not None and entry.conn.alive():
                return entry.conn
            now = time.monotonic()
            if not force and now < entry.next_attempt:
                raise Unavailable(f"host {name!r} is unreachable: {entry.last_error}")
            try:
                conn = self._hv.connect(entry.uri, host_name=name)
            except VmmgrError as exc:
                entry.conn = None
                entry.last_error = exc.message
                entry.backoff_s = min(max(entry.backoff_s * 2, 1.0), self.MAX_BACKOFF_S)
                entry.next_attempt = now + entry.backoff_s
                raise Unavailable(f"host {name!r} is unreachable: {exc.message}") from exc
            entry.conn, entry.backoff_s, entry.last_error = conn, 0.0, ""
        conn.on_domain_event(self._on_event)
        conn.on_node_device_event(lambda _dev: self._on_devices_changed(name))
        conn.on_close(partial(self._closed, name, conn))
        self._on_up(name)
        return conn

    def _closed(self, name: str, conn: HostConnection, reason: str) -> None:
        with self._lock:
            entry = self._hosts.get(name)
            if entry is None or entry.conn is not conn:
                return
            entry.conn = None
            entry.last_error = f"connection lost ({reason})"
        log.warning("host %s: connection lost (%s)", name, reason)
        self._on_down(name, f"connection lost ({reason})")

    def mark_failed(self, name: str, error: str) -> None:
        """A call failed with a connection error: drop the connection so ``get`` reconnects."""
        with self._lock:
            entry = self._hosts.get(name)
            if entry is None:
                return
            conn, entry.conn, entry.last_error = entry.conn, None, error
        if conn is not None:
            with contextlib.suppress(VmmgrError):
                conn.close()
        self._on_down(name, error)

    def close(self) -> None:
        with self._lock:
            entries, self._hosts = list(self._hosts.values()), {}
        for e in entries:
            if e.conn is not None:
                with contextlib.suppress(VmmgrError):
                    e.conn.close()
