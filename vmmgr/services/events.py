"""The event bus: every event is stored (for ListEvents / replay) and fanned out to watchers."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from vmmgr.state import repo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventRecord:
    kind: str
    resource: str
    message: str
    severity: str = "info"  # info | warning | error
    attributes: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


def _record(
    kind: str, resource: str, message: str, severity: str, attributes: dict[str, Any]
) -> EventRecord:
    attrs = {k: str(v) for k, v in attributes.items()}
    return EventRecord(kind, resource, message, severity, attrs)


def store_event(session: Session, rec: EventRecord) -> int:
    """Append ``rec`` to the event log in ``session``'s transaction; its sequence number."""
    ev = repo.append_event(
        session,
        rec.kind,
        rec.resource,
        rec.message,
        severity=rec.severity,
        attributes=rec.attributes,
        time=rec.time,
    )
    return int(ev.seq or 0)


def matches(event: EventRecord, kinds: list[str], resource: str) -> bool:
    if resource and event.resource != resource:
        return False
    if not kinds:
        return True
    for k in kinds:
        if k.endswith(".*") and event.kind.startswith(k[:-1]):
            return True
        if event.kind == k:
            return True
    return False


class EventBus:
    """Thread-safe publish/subscribe; ``persist`` stores an event and returns its seq."""

    def __init__(self, persist: Callable[[EventRecord], int]) -> None:
        self._persist = persist
        self._lock = threading.Lock()
        self._subscribers: list[queue.Queue[EventRecord | None]] = []

    def publish(
        self, kind: str, resource: str, message: str, *, severity: str = "info", **attributes: Any
    ) -> EventRecord:
        rec = _record(kind, resource, message, severity, attributes)
        try:
            seq = self._persist(rec)
        except Exception:  # an event must never break the action that emitted it
            log.exception("could not store event %s %s", kind, resource)
            seq = 0
        rec = dataclasses.replace(rec, seq=seq)
        self.fan_out(rec)
        return rec

    def publish_in(
        self,
        session: Session,
        kind: str,
        resource: str,
        message: str,
        *,
        severity: str = "info",
        **attributes: Any,
    ) -> EventRecord:
        """Store the event in the caller's transaction, so it commits with the change it tells
        of (and costs no transaction of its own); ``fan_out`` the result after the commit."""
        rec = _record(kind, resource, message, severity, attributes)
        return dataclasses.replace(rec, seq=store_event(session, rec))

    def fan_out(self, rec: EventRecord) -> None:
        """Hand a stored event to the watchers."""
        with self._lock:
            subs = list(self._subscribers)
        for q in subs:
            q.put(rec)
        log.info("event %s %s: %s", rec.kind, rec.resource, rec.message)

    def subscribe(self) -> queue.Queue[EventRecord | None]:
        q: queue.Queue[EventRecord | None] = queue.Queue(maxsize=10_000)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[EventRecord | None]) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    def close(self) -> None:
        """Wake every watcher so streams end on daemon shutdown."""
        with self._lock:
            subs, self._subscribers = self._subscribers, []
        for q in subs:
            q.put(None)

    def stream(
        self, kinds: list[str], resource: str, alive: Callable[[], bool], poll_s: float = 0.5
    ) -> Iterator[EventRecord]:
        """Subscribe now (so nothing published after this call is missed) and yield matches."""
        q = self.subscribe()

        def gen() -> Iterator[EventRecord]:
            try:
                while alive():
                    try:
                        rec = q.get(timeout=poll_s)
                    except queue.Empty:
                        continue
                    if rec is None:
                        return
                    if matches(rec, kinds, resource):
                        yield rec
            finally:
                self.unsubscribe(q)

        return gen()
