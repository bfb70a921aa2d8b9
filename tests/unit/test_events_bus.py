"""The event bus stores every event and fans it out to subscribed streams."""

from __future__ import annotations

import threading

from vmmgr.services.events import EventBus, EventRecord, matches


def test_publish_persists_and_streams() -> None:
    stored: list[EventRecord] = []

    def persist(rec: EventRecord) -> int:
        stored.append(rec)
        return len(stored)

    bus = EventBus(persist)
    stop = threading.Event()
    stream = bus.stream(["vm.*"], "", lambda: not stop.is_set(), poll_s=0.05)
    bus.publish("host.state", "h1", "ignored by the filter")
    bus.publish("vm.state", "vm1", "running", state="running")
    got = next(stream)
    assert (got.kind, got.resource, got.seq, got.attributes) == (
        "vm.state",
        "vm1",
        2,
        {"state": "running"},
    )
    assert [r.kind for r in stored] == ["host.state", "vm.state"]
    stop.set()


def test_persist_failure_does_not_break_publisher() -> None:
    def broken(_: EventRecord) -> int:
        raise RuntimeError("db down")

    rec = EventBus(broken).publish("vm.state", "x", "m")
    assert rec.seq == 0


def test_close_ends_streams() -> None:
    bus = EventBus(lambda r: 1)
    stream = bus.stream([], "", lambda: True, poll_s=0.05)
    bus.close()
    assert list(stream) == []


def test_matches_prefix_and_resource() -> None:
    rec = EventRecord("vm.state", "vm1", "m")
    assert matches(rec, [], "")
    assert matches(rec, ["vm.*"], "vm1")
    assert not matches(rec, ["host.*"], "")
    assert not matches(rec, [], "vm2")
