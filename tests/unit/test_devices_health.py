"""Device health: taint reasons from NVML facts and presence, events on transitions."""

from __future__ import annotations

from dataclasses import replace

from tests.fixtures.gpu_host import HOST, gpu_host_inventory
from vmmgr.devices.health import (
    DEVICE_RECOVERED,
    DEVICE_TAINTED,
    REASON_LOST,
    REASON_MISSING,
    REASON_NO_FACTS,
    REASON_PAGES_PENDING,
    REASON_REMAP_FAILED,
    REASON_REMAP_PENDING,
    evaluate_health,
    evaluate_host_health,
)
from vmmgr.devices.model import GpuFacts, RemappedRows
from vmmgr.snapshot import DeviceHealth

OK = GpuFacts(
    index=0,
    address="0000:3b:00.0",
    ecc_uncorrected_volatile=0,
    remapped_rows=RemappedRows(0, 0, False, False),
    retired_pages_pending=None,
)
DEV = "gpu1/0000:3b:00.0"


def test_recorded_gpu_is_healthy_and_unknowns_never_taint() -> None:
    health, reasons, events = evaluate_health(DeviceHealth.UNKNOWN, OK, device_id=DEV)
    assert (health, reasons, events) == (DeviceHealth.HEALTHY, (), ())
    unknown = GpuFacts(index=0, address="0000:3b:00.0")  # every field None
    assert (
        evaluate_health(DeviceHealth.HEALTHY, unknown, device_id=DEV).health is DeviceHealth.HEALTHY
    )


def test_each_problem_taints_with_its_reason() -> None:
    cases = {
        "ecc": (replace(OK, ecc_uncorrected_volatile=3), "uncorrected ECC errors: 3 (volatile)"),
        "pending": (
            replace(OK, remapped_rows=RemappedRows(0, 1, True, False)),
            REASON_REMAP_PENDING,
        ),
        "failed": (replace(OK, remapped_rows=RemappedRows(0, 1, False, True)), REASON_REMAP_FAILED),
        "pages": (replace(OK, retired_pages_pending=True), REASON_PAGES_PENDING),
        "lost": (replace(OK, lost=True, ecc_uncorrected_volatile=None), REASON_LOST),
    }
    for name, (facts, reason) in cases.items():
        health, reasons, events = evaluate_health(DeviceHealth.HEALTHY, facts, device_id=DEV)
        assert health is DeviceHealth.TAINTED, name
        assert reasons == (reason,), name
        assert [(e.kind, e.device_id, e.reasons) for e in events] == [
            (DEVICE_TAINTED, DEV, (reason,))
        ]


def test_remapped_uncorrectable_rows_alone_are_fine() -> None:
    facts = replace(OK, remapped_rows=RemappedRows(5, 2, False, False))
    assert (
        evaluate_health(DeviceHealth.HEALTHY, facts, device_id=DEV).health is DeviceHealth.HEALTHY
    )


def test_missing_device_taints_and_comes_back() -> None:
    r = evaluate_health(DeviceHealth.HEALTHY, None, device_id=DEV, present=False)
    assert r.health is DeviceHealth.TAINTED and r.reasons == (REASON_MISSING,)
    assert r.events[0].kind == DEVICE_TAINTED
    back = evaluate_health(
        DeviceHealth.TAINTED, None, device_id=DEV, previous_reasons=(REASON_MISSING,)
    )
    assert back.health is DeviceHealth.HEALTHY
    assert [(e.kind, e.reasons) for e in back.events] == [(DEVICE_RECOVERED, (REASON_MISSING,))]


def test_taint_that_presence_cannot_clear_is_kept() -> None:
    kept = evaluate_health(
        DeviceHealth.TAINTED, None, device_id=DEV, previous_reasons=(REASON_REMAP_PENDING,)
    )
    assert kept.health is DeviceHealth.TAINTED and kept.reasons == (REASON_REMAP_PENDING,)
    assert kept.events == ()  # no change, no event
    blind = evaluate_health(DeviceHealth.TAINTED, None, device_id=DEV)
    assert blind.reasons == (REASON_NO_FACTS,) and blind.events == ()


def test_recovery_from_facts_and_no_repeat_events() -> None:
    bad = replace(OK, ecc_uncorrected_volatile=1)
    first = evaluate_health(DeviceHealth.HEALTHY, bad, device_id=DEV)
    again = evaluate_health(first.health, bad, device_id=DEV, previous_reasons=first.reasons)
    assert again.events == ()
    worse = replace(bad, remapped_rows=RemappedRows(0, 1, True, False))
    changed = evaluate_health(first.health, worse, device_id=DEV, previous_reasons=first.reasons)
    assert changed.events[0].kind == DEVICE_TAINTED and len(changed.reasons) == 2
    healed = evaluate_health(
        DeviceHealth.TAINTED, OK, device_id=DEV, previous_reasons=first.reasons
    )
    assert healed.health is DeviceHealth.HEALTHY and healed.events[0].kind == DEVICE_RECOVERED


def test_host_health_covers_vanished_devices() -> None:
    facts = replace(OK, ecc_uncorrected_volatile=1)
    inv = gpu_host_inventory(gpus=[facts])
    gone = f"{HOST}/0000:e3:00.0"
    other_host = "gpu2/0000:3b:00.0"
    result = evaluate_host_health(
        inv,
        {gone: DeviceHealth.HEALTHY, other_host: DeviceHealth.HEALTHY},
    )
    assert result[gone].health is DeviceHealth.TAINTED and result[gone].reasons == (REASON_MISSING,)
    assert other_host not in result
    assert result[f"{HOST}/0000:3b:00.0"].health is DeviceHealth.TAINTED
    assert result[f"{HOST}/0000:af:00.0"].health is DeviceHealth.HEALTHY  # FPGA: presence only
    assert f"{HOST}/0000:19:00.0" not in result  # NICs are not tracked
