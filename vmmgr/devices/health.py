"""Device health from NVML facts and PCI presence: pure functions, events as plain data.

A device is TAINTED (never placed on) when NVML reports the GPU lost, it vanished from a PCI
rescan, it has uncorrected (volatile) ECC errors, row remapping is pending or failed, or retired
pages are pending. It recovers when a later evaluation finds none of those. Reasons the current
facts cannot re-check (a taint recorded earlier but no NVML on this pass) are kept, so a host
that loses its agent does not silently "heal" a broken GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vmmgr.devices.model import GpuFacts, HostInventory
from vmmgr.snapshot import DeviceHealth

DEVICE_TAINTED = "device.tainted"
DEVICE_RECOVERED = "device.recovered"

REASON_LOST = "gpu lost: NVML answered GPU_IS_LOST (fell off the bus)"
REASON_MISSING = "missing from PCI rescan"
REASON_ECC = "uncorrected ECC errors"  # ": <n> (volatile)" appended
REASON_REMAP_PENDING = "row remapping pending (needs a GPU reset)"
REASON_REMAP_FAILED = "row remapping failed"
REASON_PAGES_PENDING = "retired pages pending (needs a GPU reset)"
REASON_NO_FACTS = "tainted earlier; no device facts now to clear it"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    kind: str  # DEVICE_TAINTED | DEVICE_RECOVERED
    device_id: str
    reasons: tuple[str, ...] = ()


class HealthResult(NamedTuple):
    health: DeviceHealth
    reasons: tuple[str, ...]
    events: tuple[DeviceEvent, ...]


def gpu_problems(facts: GpuFacts) -> tuple[str, ...]:
    """Reasons to taint a GPU from its NVML facts; unknown (None) values never taint."""
    if facts.lost:
        return (REASON_LOST,)
    reasons: list[str] = []
    if facts.ecc_uncorrected_volatile:
        reasons.append(f"{REASON_ECC}: {facts.ecc_uncorrected_volatile} (volatile)")
    rows = facts.remapped_rows
    if rows is not None and rows.pending:
        reasons.append(REASON_REMAP_PENDING)
    if rows is not None and rows.failed:
        reasons.append(REASON_REMAP_FAILED)
    if facts.retired_pages_pending:
        reasons.append(REASON_PAGES_PENDING)
    return tuple(reasons)


def evaluate_health(
    previous: DeviceHealth,
    facts: GpuFacts | None,
    *,
    device_id: str,
    present: bool = True,
    previous_reasons: Sequence[str] = (),
) -> HealthResult:
    """New health of one device. ``facts`` None: no NVML for it (FPGA, or a host without an
    agent); ``present`` False: the device was not found by the latest inventory scan."""
    if not present:
        reasons: tuple[str, ...] = (REASON_MISSING,)
    elif facts is not None:
        reasons = gpu_problems(facts)
    elif previous is DeviceHealth.TAINTED:
        # Only presence was re-checked: keep what presence cannot clear.
        kept = tuple(r for r in previous_reasons if r != REASON_MISSING)
        reasons = kept if previous_reasons else (REASON_NO_FACTS,)
    else:
        reasons = ()

    health = DeviceHealth.TAINTED if reasons else DeviceHealth.HEALTHY
    events: tuple[DeviceEvent, ...] = ()
    if health is DeviceHealth.TAINTED and (
        previous is not DeviceHealth.TAINTED
        or (previous_reasons and set(reasons) != set(previous_reasons))
    ):
        events = (DeviceEvent(DEVICE_TAINTED, device_id, reasons),)
    elif health is DeviceHealth.HEALTHY and previous is DeviceHealth.TAINTED:
        events = (DeviceEvent(DEVICE_RECOVERED, device_id, tuple(previous_reasons)),)
    return HealthResult(health, reasons, events)


def evaluate_host_health(
    inventory: HostInventory,
    previous: Mapping[str, DeviceHealth],
    *,
    previous_reasons: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, HealthResult]:
    """Health of every accelerator of a host, keyed by device id ("<host>/<address>").

    Devices known before (keys of ``previous`` on this host) but absent from the scan come out
    tainted as missing. A lost GPU NVML cannot even name (no PCI address) cannot be matched to
    a device and is left to the agent's own report.
    """
    old_reasons = previous_reasons or {}
    out: dict[str, HealthResult] = {}
    for dev in inventory.accelerators:
        did = f"{inventory.host}/{dev.address}"
        out[did] = evaluate_health(
            previous.get(did, DeviceHealth.UNKNOWN),
            inventory.gpu_facts(dev.address),
            device_id=did,
            previous_reasons=old_reasons.get(did, ()),
        )
    prefix = f"{inventory.host}/"
    for did, health in previous.items():
        if did.startswith(prefix) and did not in out:
            out[did] = evaluate_health(
                health,
                None,
                device_id=did,
                present=False,
                previous_reasons=old_reasons.get(did, ()),
            )
    return out
