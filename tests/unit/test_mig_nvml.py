"""Applying MIG geometries through NVML (the agent's job), over the fake pynvml."""

from __future__ import annotations

import pynvml
import pytest

from drivers.devices.mig import NvmlMig
from drivers.devices.nvml import NvmlDriver
from tests.fixtures.nvml import NS, FakeNvml, h100_with, mig_enabled, recorded_h100
from vmmgr.devices.mig import profile_specs, validate_geometry
from vmmgr.devices.model import MigFacts, MigPlacement
from vmmgr.errors import DriverError, FailedPrecondition, InvalidArgument
from vmmgr.snapshot import MigProfileSnap

GPU = "0000:00:06.0"


def geometry(f: MigFacts) -> list[tuple[str, int]]:
    return sorted((i.profile, i.start) for i in f.instances)


def open_mig(fake: FakeNvml) -> NvmlMig:
    drv = NvmlDriver(fake)
    drv.open()
    return NvmlMig(drv)


def test_apply_creates_the_planned_instances() -> None:
    mig = open_mig(mig_enabled())
    f = mig.apply(
        GPU, [MigPlacement("3g.40gb", 4), MigPlacement("2g.20gb", 0), MigPlacement("1g.10gb", 2)]
    )
    assert geometry(f) == [("1g.10gb", 2), ("2g.20gb", 0), ("3g.40gb", 4)]
    specs = profile_specs(
        [MigProfileSnap(p.name, p.slices, p.memory_mib, p.max_instances) for p in f.profiles]
    )
    validate_geometry(specs, geometry(f))
    assert {i.size for i in f.instances if i.profile == "3g.40gb"} == {4}


def test_apply_keeps_matching_instances_and_needs_no_idle_gpu_to_add() -> None:
    fake = mig_enabled()
    mig = open_mig(fake)
    mig.apply(GPU, [MigPlacement("3g.40gb", 0)])
    before = {gi.id for gi in fake.gpus[0].gis.values()}
    fake.gpus[0].processes = [4242]  # busy, but nothing is destroyed
    f = mig.apply(GPU, [MigPlacement("3g.40gb", 0), MigPlacement("1g.10gb", None)])
    assert before <= {gi.id for gi in fake.gpus[0].gis.values()}
    assert [p for p, _ in geometry(f)] == ["1g.10gb", "3g.40gb"]
    with pytest.raises(FailedPrecondition, match="1 compute processes"):
        mig.apply(GPU, [MigPlacement("7g.80gb", 0)])
    assert [p for p, _ in geometry(mig._facts(mig.drv.handle(GPU), GPU))] == ["1g.10gb", "3g.40gb"]


def test_reshape_destroys_compute_instances_first() -> None:
    fake = mig_enabled()
    mig = open_mig(fake)
    mig.apply(GPU, [MigPlacement("1g.10gb", s) for s in range(3)])
    gi = next(iter(fake.gpus[0].gis.values()))
    handle = fake._handle(pynvml.c_nvmlGpuInstance_t, gi.id)
    fake.nvmlGpuInstanceCreateComputeInstance(handle, 0)  # a CI inside: destroy must clear it
    f = mig.apply(GPU, [MigPlacement("7g.80gb", 0)])
    assert geometry(f) == [("7g.80gb", 0)]
    assert "nvmlComputeInstanceDestroy" in fake.calls


def test_failure_midway_restores_the_previous_geometry() -> None:
    fake = mig_enabled()
    mig = open_mig(fake)
    mig.apply(GPU, [MigPlacement("4g.40gb", 0), MigPlacement("3g.40gb", 4)])
    gi = next(g for g in fake.gpus[0].gis.values() if g.profile_index == 3)
    fake.nvmlGpuInstanceCreateComputeInstance(fake._handle(pynvml.c_nvmlGpuInstance_t, gi.id), 3)
    # second creation fails: the first new one is destroyed, both old ones come back
    original = fake.nvmlDeviceCreateGpuInstanceWithPlacement
    made = {"n": 0}

    def flaky(h, pid, placement):  # type: ignore[no-untyped-def]
        made["n"] += 1
        if made["n"] == 2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
        return original(h, pid, placement)

    fake.nvmlDeviceCreateGpuInstanceWithPlacement = flaky  # type: ignore[method-assign]
    with pytest.raises(DriverError, match="code 23"):
        mig.apply(GPU, [MigPlacement("2g.20gb", 0), MigPlacement("2g.20gb", 2)])
    f = mig._facts(mig.drv.handle(GPU), GPU)
    assert geometry(f) == [("3g.40gb", 4), ("4g.40gb", 0)]
    restored = next(g for g in fake.gpus[0].gis.values() if g.profile_index == 3)
    assert list(restored.cis.values()) == [3]  # its compute instance came back too


def test_refusals() -> None:
    with pytest.raises(FailedPrecondition, match="MIG mode is off"):
        open_mig(recorded_h100()).apply(GPU, [MigPlacement("1g.10gb", 0)])
    with pytest.raises(InvalidArgument) as err:
        open_mig(mig_enabled()).apply(GPU, [MigPlacement("1g.10gb", 0), MigPlacement("5g.50gb", 0)])
    assert err.value.field == "profiles[1]"
    vgpus = h100_with(mig_mode=[1, 1], active_vgpus=[1])
    m = open_mig(vgpus)
    m.apply(GPU, [MigPlacement("1g.10gb", 0)])
    with pytest.raises(FailedPrecondition, match="active vGPUs"):
        m.apply(GPU, [])
    no_mig = h100_with(profiles={}, mig_mode=NS)
    with pytest.raises(FailedPrecondition, match="does not support MIG"):
        open_mig(no_mig).apply(GPU, [])


def test_set_mode_needs_idle_and_a_reset() -> None:
    fake = recorded_h100()
    mig = open_mig(fake)
    fake.gpus[0].processes = [1]
    with pytest.raises(FailedPrecondition, match="cannot change MIG mode"):
        mig.set_mode(GPU, True)
    fake.gpus[0].processes = []
    f = mig.set_mode(GPU, True)
    assert (f.enabled, f.pending) == (False, True)  # takes effect after a GPU reset
    fake.reset(fake.gpus[0])
    assert mig.set_mode(GPU, True).enabled is True
