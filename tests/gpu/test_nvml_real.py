"""The NVML driver on a real NVIDIA GPU: prints the facts; skipped where NVML cannot start.

Run: .venv/bin/pytest -m gpu tests/gpu -s
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from drivers.devices.nvml import NvmlDriver
from vmmgr.devices.health import gpu_problems
from vmmgr.devices.mig import profile_specs, validate_geometry
from vmmgr.snapshot import MigProfileSnap

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml() -> NvmlDriver:
    pytest.importorskip("pynvml")
    drv = NvmlDriver.try_open()
    if drv is None:
        pytest.skip("NVML cannot initialise here (no NVIDIA driver or GPU)")
    yield drv
    drv.close()


def test_real_gpu_facts(nvml: NvmlDriver) -> None:
    facts = nvml.gpu_facts()
    print(
        json.dumps({"driver": nvml.driver_version(), "gpus": [asdict(f) for f in facts]}, indent=1)
    )
    assert facts, "NVML initialised but reports no GPU"
    for f in facts:
        assert f.address and f.uuid and f.uuid.startswith("GPU-")
        assert f.name and f.memory_total_mib and f.memory_total_mib > 1024
        assert not f.lost
        assert f.temperature_c is None or 0 < f.temperature_c < 120
        assert (
            f.power_mw is None or f.power_limit_mw is None or f.power_mw <= f.power_limit_mw * 1.2
        )
        print(f.address, "problems:", gpu_problems(f) or "none", "errors:", f.errors or "none")


def test_real_mig_profiles_fit_the_placement_model(nvml: NvmlDriver) -> None:
    for f in nvml.gpu_facts():
        if f.mig is None or not f.mig.profiles:
            continue
        specs = profile_specs(
            [
                MigProfileSnap(p.name, p.slices, p.memory_mib, p.max_instances)
                for p in f.mig.profiles
            ]
        )
        # every profile alone at each allowed start, and its documented maximum count, fit
        for s in specs:
            for start in s.starts:
                validate_geometry(specs, [(s.name, start)])
        existing = [(i.profile, i.start) for i in f.mig.instances]
        validate_geometry(specs, existing)
        print(f.address, [(s.name, s.memory_slots, s.starts) for s in specs])
