"""The NVML driver over a fake pynvml shaped from the real H100 recording, and its variants."""

from __future__ import annotations

import pynvml
import pytest

from drivers.devices.nvml import NvmlDriver, NvmlUnavailable, nvml_session, profile_name
from tests.fixtures.nvml import (
    FakeGpu,
    FakeNvml,
    ecc_error,
    failed_remap,
    gpu_lost,
    h100_with,
    pending_remap,
    recorded_h100,
    vgpu_host,
)
from vmmgr.devices.health import (
    REASON_LOST,
    REASON_REMAP_FAILED,
    REASON_REMAP_PENDING,
    gpu_problems,
)
from vmmgr.devices.model import RemappedRows
from vmmgr.errors import DriverError, NotFound


def facts(fake: FakeNvml):  # type: ignore[no-untyped-def]
    with NvmlDriver(fake) as drv:
        return drv.gpu_facts()


def test_recorded_values_come_through() -> None:
    fake = recorded_h100()
    with NvmlDriver(fake) as drv:
        [f] = drv.gpu_facts()
        assert drv.driver_version() == "580.159.04"
    assert f.address == "0000:00:06.0"
    assert f.uuid == "GPU-067a4a85-5249-2c42-0cb5-3120d2e043e7"
    assert f.name == "NVIDIA H100 80GB HBM3"
    assert f.pci_device_id == 0x233010DE
    assert (f.utilization_gpu_pct, f.utilization_memory_pct, f.temperature_c) == (0, 0, 36)
    assert (f.power_mw, f.power_limit_mw) == (123965, 700000)
    assert (f.ecc_enabled, f.ecc_pending, f.ecc_uncorrected_volatile) == (True, True, 0)
    assert f.remapped_rows == RemappedRows(0, 0, False, False)
    assert f.virtualization_mode == "passthrough"
    assert f.persistence_mode is True and f.compute_processes == 0
    assert f.errors == () and not f.lost
    assert fake.initialised is False  # the session closed


def test_not_supported_answers_become_unknown() -> None:
    [f] = facts(recorded_h100())
    # exactly the calls the recorded GPU answered "Not Supported"
    assert f.retired_pages_pending is None
    assert f.host_vgpu_mode is None
    assert f.vgpu_supported is None and f.vgpu_creatable is None
    assert f.numa_node is None
    assert gpu_problems(f) == ()


def test_mig_profiles_as_recorded() -> None:
    [f] = facts(recorded_h100())
    assert f.mig is not None and f.mig.enabled is False and f.mig.pending is False
    got = {(p.index, p.id, p.name, p.slices, p.memory_mib, p.max_instances) for p in f.mig.profiles}
    assert got == {
        (0, 19, "1g.10gb", 1, 9984, 7),
        (1, 14, "2g.20gb", 2, 20096, 3),
        (2, 9, "3g.40gb", 3, 40448, 2),
        (3, 5, "4g.40gb", 4, 40448, 1),
        (4, 0, "7g.80gb", 7, 81152, 1),
        (7, 20, "1g.10gb+me", 1, 9984, 1),
        (9, 15, "1g.20gb", 1, 20096, 4),
    }
    assert f.mig.instances == ()


def test_profile_names() -> None:
    assert profile_name(0, 1, 9984) == "1g.10gb"
    assert profile_name(4, 7, 81152) == "7g.80gb"
    assert profile_name(7, 1, 9984) == "1g.10gb+me"
    assert profile_name(0, 1, 4864) == "1g.5gb"  # A100 40GB
    assert profile_name(0, 1, 16384, "MIG 1g.18gb") == "1g.18gb"  # NVML's own name wins


def test_variants_taint() -> None:
    [ecc] = facts(ecc_error(4))
    assert ecc.ecc_uncorrected_volatile == 4 and gpu_problems(ecc)
    [pend] = facts(pending_remap())
    assert pend.remapped_rows == RemappedRows(0, 1, True, False)
    assert gpu_problems(pend) == (REASON_REMAP_PENDING,)
    assert gpu_problems(facts(failed_remap())[0]) == (REASON_REMAP_FAILED,)


def test_gpu_lost_stops_querying_and_keeps_the_address() -> None:
    fake = gpu_lost()
    [f] = facts(fake)
    assert f.lost and f.address == "0000:00:06.0"
    assert f.temperature_c is None and f.mig is None and f.errors == ()
    assert gpu_problems(f) == (REASON_LOST,)
    after_pci = fake.calls[fake.calls.index("nvmlDeviceGetPciInfo") + 1 :]
    assert len([c for c in after_pci if c.startswith("nvmlDevice")]) == 1  # the first lost call
    gone = FakeNvml([FakeGpu(lost=True, lost_pci_info=True)])
    [g] = facts(gone)
    assert g.lost and g.address == ""


def test_other_errors_are_recorded_not_raised() -> None:
    fake = recorded_h100()
    fake.fail["nvmlDeviceGetPowerUsage"] = [pynvml.NVML_ERROR_NO_PERMISSION]
    [f] = facts(fake)
    assert f.power_mw is None and f.temperature_c == 36
    assert len(f.errors) == 1 and f.errors[0].startswith("nvmlDeviceGetPowerUsage")


def test_functions_the_bindings_lack_are_unknown() -> None:
    class OldBindings(FakeNvml):
        nvmlDeviceGetRemappedRows = None  # an nvidia-ml-py without this function

    [f] = facts(OldBindings([FakeGpu()]))
    assert f.remapped_rows is None and f.errors == ()
    assert f.temperature_c == 36


def test_vgpu_host_types() -> None:
    [f] = facts(vgpu_host())
    assert f.virtualization_mode == "host_vgpu" and f.host_vgpu_mode == "sriov"
    assert f.address == "0000:5e:00.0"
    assert [(t.type_id, t.name, t.max_instances) for t in f.vgpu_supported or ()] == [
        (700, "GRID A100D-4C", 20),
        (701, "GRID A100D-8C", 10),
        (702, "GRID A100D-20C", 4),
    ]
    assert [t.name for t in f.vgpu_creatable or ()] == ["GRID A100D-4C"]


def test_init_failures() -> None:
    for code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
        with pytest.raises(NvmlUnavailable):
            NvmlDriver(FakeNvml(init_error=code)).open()
        assert NvmlDriver.try_open(FakeNvml(init_error=code)) is None
        with nvml_session(FakeNvml(init_error=code)) as drv:
            assert drv is None
    with nvml_session(recorded_h100()) as ok:
        assert ok is not None and len(ok.gpu_facts()) == 1


def test_handle_lookup() -> None:
    two = FakeNvml([FakeGpu(), FakeGpu(bus_id="00000000:3B:00.0", uuid="GPU-2")])
    with NvmlDriver(two) as drv:
        assert drv.facts_for("0000:3b:00.0").uuid == "GPU-2"
        assert drv.handle("3b:00.0") is two.gpus[1]
        with pytest.raises(NotFound):
            drv.handle("0000:99:00.0")
    assert h100_with(processes=[4242]).gpus[0].processes == [4242]


def test_device_count_failure_is_a_driver_error() -> None:
    fake = recorded_h100()
    fake.fail["nvmlDeviceGetCount"] = [pynvml.NVML_ERROR_UNKNOWN]
    with NvmlDriver(fake) as drv, pytest.raises(DriverError, match="nvmlDeviceGetCount"):
        drv.gpu_facts()


def test_older_bindings_returning_bytes() -> None:
    [f] = facts(h100_with(name=b"NVIDIA H100 80GB HBM3", uuid=b"GPU-067a4a85"))
    assert f.name == "NVIDIA H100 80GB HBM3" and f.uuid == "GPU-067a4a85"


def test_unreachable_handle_and_unknown_address() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu(bus_id="00000000:3B:00.0")])
    fake.fail["nvmlDeviceGetHandleByIndex"] = [pynvml.NVML_ERROR_GPU_IS_LOST]
    with NvmlDriver(fake) as drv:
        first, second = drv.gpu_facts()
        assert first.lost and first.address == "" and second.address == "0000:3b:00.0"
        with pytest.raises(NotFound):
            drv.facts_for("0000:99:00.0")
