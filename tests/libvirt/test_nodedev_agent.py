"""The local host agent: libvirt test driver + fake sysfs + fake NVML + a real FPGA tool."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from drivers.devices.agent_local import LocalDeviceAgent
from drivers.devices.mdev import SysfsMdevBackend
from drivers.devices.nvml import NvmlDriver
from tests.fixtures.gpu_host import GPU_HOST_XML
from tests.fixtures.nvml import FakeGpu, FakeNvml
from tests.fixtures.sysfs import FakeSysfs, gpu_host_sysfs
from vmmgr.devices.health import evaluate_host_health
from vmmgr.devices.model import FpgaProfile, MigPlacement
from vmmgr.devices.snapshot import inventory_to_snapshot
from vmmgr.errors import FailedPrecondition, NotFound
from vmmgr.snapshot import DeviceHealth

pytestmark = pytest.mark.libvirt

URI = "test://" + str(GPU_HOST_XML)
H100 = "0000:3b:00.0"


def h100_here(**changes: object) -> FakeNvml:
    """The recorded H100, seen at the fixture host's address."""
    gpu = FakeGpu(bus_id="00000000:3B:00.0")
    for k, v in changes.items():
        setattr(gpu, k, v)
    return FakeNvml([gpu])


@pytest.fixture
def fs(tmp_path: Path) -> FakeSysfs:
    return gpu_host_sysfs(tmp_path / "root")


def agent(fs: FakeSysfs, fake: FakeNvml | None) -> LocalDeviceAgent:
    nvml = NvmlDriver(fake) if fake is not None else None
    if nvml is not None:
        nvml.open()
    return LocalDeviceAgent(
        "gpu1",
        libvirt_source=URI,
        sysfs_root=fs.root,
        nvml=nvml,
        mdev_backend=SysfsMdevBackend(fs.root, write=fs.write),
    )


def test_inventory_joins_nvml_facts(fs: FakeSysfs) -> None:
    a = agent(fs, h100_here())
    inv = a.inventory()
    facts = inv.gpu_facts(H100)
    assert facts is not None and facts.name == "NVIDIA H100 80GB HBM3"
    assert inv.nvml_driver_version == "580.159.04"
    assert a.gpu_facts()[0].address == H100
    snap = {d.address: d for d in inventory_to_snapshot(inv)}
    assert snap[H100].mig is not None and not snap[H100].mig.enabled
    assert snap[H100].utilization == 0.0


def test_ecc_error_taints_through_the_whole_chain(fs: FakeSysfs) -> None:
    inv = agent(fs, h100_here(ecc_uncorrected_volatile=7)).inventory()
    health = evaluate_host_health(inv, {})
    r = health[f"gpu1/{H100}"]
    assert r.health is DeviceHealth.TAINTED and "7" in r.reasons[0]
    assert r.events[0].kind == "device.tainted"
    assert health["gpu1/0000:5e:00.0"].health is DeviceHealth.HEALTHY  # no facts: presence only


def test_without_nvml_the_agent_still_works(fs: FakeSysfs) -> None:
    a = agent(fs, None)
    assert a.gpu_facts() == []
    assert len(a.inventory().accelerators) == 10
    with pytest.raises(FailedPrecondition, match="no NVML"):
        a.apply_mig_geometry(H100, [MigPlacement("1g.10gb", 0)])


def test_mig_through_the_agent(fs: FakeSysfs) -> None:
    a = agent(fs, h100_here(mig_mode=[1, 1]))
    f = a.apply_mig_geometry(H100, [MigPlacement("4g.40gb", 0), MigPlacement("3g.40gb", 4)])
    assert sorted(i.profile for i in f.instances) == ["3g.40gb", "4g.40gb"]
    assert a.set_mig_mode(H100, False).pending is False


def test_mdevs_through_the_agent(fs: FakeSysfs) -> None:
    a = agent(fs, None)
    rec = a.create_mdev("0000:d8:00.0", "nvidia-471")
    assert rec.parent_driver == "nvidia" and rec.via == "sysfs"
    assert fs.available("0000:d8:00.0", "nvidia-471") == 4
    assert rec.uuid in {m.uuid for m in a.inventory().mdevs}
    a.remove_mdev(rec.uuid)
    assert fs.available("0000:d8:00.0", "nvidia-471") == 5


def test_program_fpga_through_the_agent(fs: FakeSysfs, tmp_path: Path) -> None:
    tool = tmp_path / "xbutil"
    tool.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/ran"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    bit = tmp_path / "u250.xclbin"
    bit.write_bytes(b"\x00xclbin2\x00" * 100)
    profile = FpgaProfile(
        "u250",
        str(bit),
        hashlib.sha256(bit.read_bytes()).hexdigest(),
        (str(tool), "program", "-d", "{device}", "-u", "{bitstream}"),
    )
    a = agent(fs, None)
    result = a.program_fpga("af:00.0", profile)
    assert (tmp_path / "ran").read_text().split() == [
        "program",
        "-d",
        "0000:af:00.0",
        "-u",
        str(bit),
    ]
    assert result.device == "0000:af:00.0"
    with pytest.raises(NotFound):
        a.program_fpga("0000:ee:00.0", profile)
