"""Concurrency limits around real migrations: a second migration from a host at its limit
waits (or is refused) until the first one ends."""

from __future__ import annotations

import threading
import time

import pytest

from drivers.hypervisor.libvirt.migration import LiveMigrationOptions, migrate_live
from drivers.lab import Lab
from vmmgr.errors import Cancelled, ResourceExhausted
from vmmgr.migration import MigrationLimiter, MigrationLimits, MigrationSlot

pytestmark = pytest.mark.lab


def test_outgoing_limit_holds_across_real_migrations(lab: Lab, conns, guests) -> None:
    g1 = guests(host=0, pool="shared")
    g2 = guests(host=0, pool="shared")
    for g in (g1, g2):
        hb = g.heartbeat(conns, 0)
        try:
            hb.wait_for(1, timeout_s=120)
        finally:
            hb.stop()
    limiter = MigrationLimiter(MigrationLimits(per_host_outgoing=1, per_host_incoming=4))
    slot1 = MigrationSlot(g1.uuid, "lab0", "lab1")
    slot2 = MigrationSlot(g2.uuid, "lab0", "lab1")
    cancel1 = threading.Event()
    in_flight = threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with limiter.slot(slot1):
            try:
                migrate_live(
                    g1.dom(conns, 0),
                    lab.hosts[1].uri,
                    LiveMigrationOptions(unsafe=True, bandwidth_mib_s=2, schedule=()),
                    on_progress=lambda p: in_flight.set() if p.percent > 0 else None,
                    cancel=cancel1,
                )
                outcome["first"] = "migrated"
            except Cancelled:
                outcome["first"] = "cancelled"

    def second() -> None:
        with limiter.slot(slot2, timeout_s=120):
            outcome["admitted_at"] = time.monotonic()
            outcome["second"] = migrate_live(
                g2.dom(conns, 0), lab.hosts[1].uri, LiveMigrationOptions(unsafe=True)
            )

    t1 = threading.Thread(target=first)
    t1.start()
    assert in_flight.wait(60), "first migration never started moving data"
    with pytest.raises(ResourceExhausted, match="limit 1"):
        limiter.acquire(slot2, timeout_s=0)  # refused at once
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(1.0)
    assert "admitted_at" not in outcome  # still waiting for the slot
    assert g2.running_on(conns, 0) and g2.name not in conns.names(1)
    released_at = time.monotonic()
    cancel1.set()
    t1.join(60)
    t2.join(120)
    assert outcome["first"] == "cancelled"
    assert float(outcome["admitted_at"]) >= released_at  # type: ignore[arg-type]
    assert outcome["second"].mode == "live"  # type: ignore[union-attr]
    assert g1.running_on(conns, 0)
    assert g2.running_on(conns, 1) and g2.name not in conns.names(0)
    assert limiter.running() == ()
