"""Accelerators end to end through the gRPC API on the libvirt test driver: a GPU host from a
custom node XML, the local device agent over a fake sysfs tree and a fake NVML shaped from the
recorded H100."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from lxml import etree

from drivers.devices.agent_local import LocalDeviceAgent
from drivers.devices.mdev import SysfsMdevBackend
from drivers.devices.nvml import NvmlDriver
from tests.fixtures.gpu_host import GPU_HOST_XML
from tests.fixtures.nvml import FakeGpu, FakeNvml
from tests.fixtures.sysfs import gpu_host_sysfs
from tests.harness import Daemon, make_qcow2, running_daemon, test_config
from vmmgr.errors import DriverError
from vmmgr.state import repo
from vmmgr.state.models import Host
from vmmgr.v1 import device_pb2, host_pb2, image_pb2, operation_pb2, vm_pb2

URI = "test://" + str(GPU_HOST_XML)
H100 = "gpu1/0000:3b:00.0"
A100 = "gpu1/0000:5e:00.0"
SUCCEEDED = operation_pb2.OPERATION_STATE_SUCCEEDED
FAILED = operation_pb2.OPERATION_STATE_FAILED


class Env:
    def __init__(self, tmp: Path) -> None:
        self.fs = gpu_host_sysfs(tmp / "sysfs")
        self.gpu = FakeGpu(bus_id="00000000:3B:00.0")
        self.nvml = FakeNvml([self.gpu])
        self.driver = NvmlDriver(self.nvml)
        self.driver.open()
        self.marker = tmp / "programmed"
        tool = tmp / "fpga-tool"
        tool.write_text(f'#!/bin/sh\necho "$@" > {self.marker}\n')
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
        self.bitstream = tmp / "u250.xclbin"
        self.bitstream.write_bytes(b"bitstream")
        self.tool = tool

    def agent(self, host: Host) -> LocalDeviceAgent:
        return LocalDeviceAgent(
            host.name,
            libvirt_source=URI,
            sysfs_root=self.fs.root,
            nvml=self.driver,
            mdev_backend=SysfsMdevBackend(self.fs.root, write=self.fs.write),
        )

    def profiles(self, sha: str | None = None) -> dict[str, dict[str, object]]:
        digest = sha or hashlib.sha256(self.bitstream.read_bytes()).hexdigest()
        return {
            "xdma": {
                "bitstream": str(self.bitstream),
                "sha256": digest,
                "command": [str(self.tool), "-d", "{device}", "-u", "{bitstream}"],
            }
        }


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def daemon(tmp_path: Path, env: Env) -> Iterator[Daemon]:
    cfg = test_config(tmp_path, fpga_profiles=env.profiles())
    with running_daemon(cfg, env.agent) as d:
        d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="gpu1", uri=URI))
        op = d.images.ImportImage(
            image_pb2.ImportImageRequest(
                name="base", source_path=str(make_qcow2(tmp_path / "base.qcow2"))
            )
        ).operation
        assert d.wait(op).state == SUCCEEDED
        yield d


def create(d: Daemon, name: str, **kw: object) -> operation_pb2.Operation:
    spec = vm_pb2.VMSpec(
        name=name, vcpus=2, memory_mib=1024, disks=[vm_pb2.DiskSpec(image="base")], **kw
    )  # type: ignore[arg-type]
    return d.wait(d.vms.CreateVM(vm_pb2.CreateVMRequest(spec=spec)).operation)


def code_of(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)  # type: ignore[operator]
    return err.value.code(), err.value.details()


def hostdevs(d: Daemon, vm_id: str) -> list[dict[str, str]]:
    root = etree.fromstring(d.core.conns.get("gpu1").domain_xml(vm_id).encode())
    out = []
    for hd in root.iter("hostdev"):
        addr = hd.find("source/address")
        assert addr is not None
        out.append({"type": hd.get("type", ""), **dict(addr.attrib)})
    return out


def claims(d: Daemon) -> list[tuple[str, str]]:
    with d.core.store.read_session() as s:
        return sorted((c.device_id, c.kind) for c in repo.list_claims(s))


def test_inventory_health_and_telemetry(daemon: Daemon) -> None:
    devs = {
        x.id: x for x in daemon.devices_stub().ListDevices(device_pb2.ListDevicesRequest()).devices
    }
    assert devs[H100].model == "H100-80GB" and devs[H100].kind == device_pb2.DEVICE_KIND_GPU
    assert devs["gpu1/0000:af:00.0"].kind == device_pb2.DEVICE_KIND_FPGA
    assert "gpu1/0000:18:00.1" in devs  # the A6000's audio function: same IOMMU group
    assert "gpu1/0000:19:00.0" not in devs  # a NIC alone in its group is not tracked
    a100 = devs[A100]
    assert {t.name for t in a100.mdev_types} >= {"nvidia-700", "nvidia-701"}
    t = devs[H100].telemetry
    assert (t.name, t.temperature_c, round(t.power_w, 3)) == (
        "NVIDIA H100 80GB HBM3",
        36.0,
        123.965,
    )
    assert devs[H100].health == device_pb2.DEVICE_HEALTH_HEALTHY
    samples = (
        daemon.devices_stub()
        .GetDeviceTelemetry(device_pb2.GetDeviceTelemetryRequest(id=H100))
        .samples
    )
    assert len(samples) == 1 and samples[0].temperature_c == 36.0


def test_whole_gpu_passthrough_claims_and_releases(daemon: Daemon) -> None:
    op = create(daemon, "train", gpus=[vm_pb2.GpuRequest(model="H100-80GB", count=1)])
    assert op.state == SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    assert hostdevs(daemon, vm_id) == [
        {"type": "pci", "domain": "0x0000", "bus": "0x3b", "slot": "0x00", "function": "0x0"}
    ]
    dev = daemon.devices_stub().GetDevice(device_pb2.GetDeviceRequest(id=H100)).device
    assert dev.claimed_by == vm_id
    got, details = code_of(
        daemon.vms.CreateVM,
        vm_pb2.CreateVMRequest(
            spec=vm_pb2.VMSpec(
                name="second",
                vcpus=1,
                memory_mib=256,
                disks=[vm_pb2.DiskSpec(image="base")],
                gpus=[vm_pb2.GpuRequest(model="10de:2330", count=1)],
            )
        ),
    )
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "gpu" in details
    done = daemon.wait(daemon.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation)
    assert done.state == SUCCEEDED and claims(daemon) == []


def test_passthrough_takes_the_whole_iommu_group(daemon: Daemon) -> None:
    op = create(daemon, "viz", gpus=[vm_pb2.GpuRequest(model="RTX-A6000")])
    assert op.state == SUCCEEDED, op.error
    buses = sorted((h["bus"], h["function"]) for h in hostdevs(daemon, op.result["vm_id"]))
    assert buses == [("0x18", "0x0"), ("0x18", "0x1")]
    assert claims(daemon) == [("gpu1/0000:18:00.0", "pci"), ("gpu1/0000:18:00.1", "pci")]


def test_vgpu_mdev_is_created_attached_and_removed(daemon: Daemon, env: Env) -> None:
    before = env.fs.available("0000:5e:00.0", "nvidia-700")
    op = create(daemon, "infer", vgpu_type="nvidia-700")
    assert op.state == SUCCEEDED, op.error
    vm_id = op.result["vm_id"]
    (hd,) = hostdevs(daemon, vm_id)
    assert hd["type"] == "mdev"
    assert (env.fs.sys / "bus" / "mdev" / "devices" / hd["uuid"]).exists()
    assert env.fs.available("0000:5e:00.0", "nvidia-700") == before - 1
    daemon.wait(daemon.vms.DeleteVM(vm_pb2.DeleteVMRequest(vm=vm_id)).operation)
    assert not (env.fs.sys / "bus" / "mdev" / "devices" / hd["uuid"]).exists()
    assert env.fs.available("0000:5e:00.0", "nvidia-700") == before and claims(daemon) == []


def test_failure_after_mdev_creation_leaves_no_mdev_claim_or_domain(
    daemon: Daemon, env: Env
) -> None:
    before = env.fs.available("0000:5e:00.0", "nvidia-700")

    def fail(step: str) -> None:
        if step == "define":
            raise DriverError("injected failure at define")

    daemon.core.vms.step_hook = fail
    op = create(daemon, "infer", vgpu_type="GRID A100D-4C")
    assert op.state == FAILED and "injected" in op.error.message
    assert env.fs.available("0000:5e:00.0", "nvidia-700") == before
    assert claims(daemon) == []
    assert daemon.core.conns.get("gpu1").list_domains() == []


def test_bad_accelerator_requests_name_the_field(daemon: Daemon) -> None:
    def bad(**kw: object) -> tuple[grpc.StatusCode, str]:
        return code_of(
            daemon.vms.CreateVM,
            vm_pb2.CreateVMRequest(
                spec=vm_pb2.VMSpec(
                    name="x", vcpus=1, memory_mib=256, disks=[vm_pb2.DiskSpec(image="base")], **kw
                )
            ),
        )  # type: ignore[arg-type]

    got, details = bad(gpus=[vm_pb2.GpuRequest(model="B200")])
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "spec.gpus[0].model" in details
    got, details = bad(gpus=[vm_pb2.GpuRequest(model="H100-80GB", count=4)])
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    got, details = bad(vgpu_type="nvidia-999")
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "spec.vgpu_type" in details
    got, details = bad(mig_profile="1g.10gb")
    assert got == grpc.StatusCode.FAILED_PRECONDITION and "spec.mig_profile" in details
    got, details = bad(fpgas=[vm_pb2.FpgaRequest(model="ALVEO-U250", profile="nope")])
    assert got == grpc.StatusCode.NOT_FOUND and "spec.fpgas[0].profile" in details
    assert claims(daemon) == [] and daemon.core.conns.get("gpu1").list_domains() == []


def test_tainted_gpu_is_avoided_and_reported(daemon: Daemon, env: Env) -> None:
    env.gpu.ecc_uncorrected_volatile = 3
    daemon.devices_stub().RescanDevices(device_pb2.RescanDevicesRequest(host="gpu1"))
    dev = daemon.devices_stub().GetDevice(device_pb2.GetDeviceRequest(id=H100)).device
    assert dev.health == device_pb2.DEVICE_HEALTH_TAINTED
    assert any("ECC" in r or "ecc" in r for r in dev.health_reasons)
    events = daemon.events_list("device.tainted")
    assert [e.resource for e in events] == [H100]
    got, _ = code_of(
        daemon.vms.CreateVM,
        vm_pb2.CreateVMRequest(
            spec=vm_pb2.VMSpec(
                name="x",
                vcpus=1,
                memory_mib=256,
                disks=[vm_pb2.DiskSpec(image="base")],
                gpus=[vm_pb2.GpuRequest(model="H100-80GB")],
            )
        ),
    )
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    env.gpu.ecc_uncorrected_volatile = 0
    daemon.devices_stub().RescanDevices(device_pb2.RescanDevicesRequest(host="gpu1"))
    assert [e.resource for e in daemon.events_list("device.recovered")] == [H100]
    # an operator taint survives rescans until cleared
    daemon.devices_stub().SetDeviceHealth(
        device_pb2.SetDeviceHealthRequest(
            id=H100, health=device_pb2.DEVICE_HEALTH_TAINTED, reason="fan noise"
        )
    )
    daemon.devices_stub().RescanDevices(device_pb2.RescanDevicesRequest(host="gpu1"))
    dev = daemon.devices_stub().GetDevice(device_pb2.GetDeviceRequest(id=H100)).device
    assert (
        dev.health == device_pb2.DEVICE_HEALTH_TAINTED
        and "operator: fan noise" in dev.health_reasons
    )


def test_fpga_is_programmed_before_start(daemon: Daemon, env: Env) -> None:
    op = create(daemon, "fpga", fpgas=[vm_pb2.FpgaRequest(model="ALVEO-U250", profile="xdma")])
    assert op.state == SUCCEEDED, op.error
    assert env.marker.read_text().split() == ["-d", "0000:af:00.0", "-u", str(env.bitstream)]
    assert ("gpu1/0000:af:00.0", "pci") in claims(daemon)


def test_fpga_checksum_mismatch_runs_nothing_and_leaves_nothing(tmp_path: Path, env: Env) -> None:
    cfg = test_config(tmp_path, fpga_profiles=env.profiles(sha="0" * 64))
    with running_daemon(cfg, env.agent) as d:
        d.hosts.RegisterHost(host_pb2.RegisterHostRequest(name="gpu1", uri=URI))
        d.wait(
            d.images.ImportImage(
                image_pb2.ImportImageRequest(
                    name="base", source_path=str(make_qcow2(tmp_path / "b.qcow2"))
                )
            ).operation
        )
        op = create(d, "fpga", fpgas=[vm_pb2.FpgaRequest(model="ALVEO-U250", profile="xdma")])
        assert op.state == FAILED and "sha256" in op.error.message
        assert not env.marker.exists()
        assert claims(d) == [] and d.core.conns.get("gpu1").list_domains() == []


def test_mig_geometry_plan_and_apply(daemon: Daemon, env: Env) -> None:
    env.gpu.mig_mode = [1, 1]
    daemon.devices_stub().RescanDevices(device_pb2.RescanDevicesRequest(host="gpu1"))
    # two 3g.40gb take all 8 memory slices of an H100: the 1g.10gb cannot also fit
    full = daemon.devices_stub().PlanMigGeometry(
        device_pb2.PlanMigGeometryRequest(host="gpu1", requests=["3g.40gb", "3g.40gb", "1g.10gb"])
    )
    assert len(full.unplaced) == 1 and full.unplaced[0].startswith("1g.10gb")
    plan = daemon.devices_stub().PlanMigGeometry(
        device_pb2.PlanMigGeometryRequest(host="gpu1", requests=["3g.40gb", "2g.20gb", "1g.10gb"])
    )
    (geo,) = plan.geometries
    assert geo.device_id == H100 and sorted(geo.profiles) == ["1g.10gb", "2g.20gb", "3g.40gb"]
    op = (
        daemon.devices_stub()
        .ApplyMigGeometry(
            device_pb2.ApplyMigGeometryRequest(device_id=H100, profiles=list(geo.profiles))
        )
        .operation
    )
    assert daemon.wait(op).state == SUCCEEDED
    dev = daemon.devices_stub().GetDevice(device_pb2.GetDeviceRequest(id=H100)).device
    assert sorted(dev.mig.instances) == ["1g.10gb", "2g.20gb", "3g.40gb"]
    got, _ = code_of(
        daemon.devices_stub().ApplyMigGeometry,
        device_pb2.ApplyMigGeometryRequest(device_id=A100, profiles=["1g.10gb"]),
    )
    assert got == grpc.StatusCode.FAILED_PRECONDITION


def test_vgpu_mdevs_are_recreated_after_a_host_reboot(daemon: Daemon, env: Env) -> None:
    op = create(daemon, "infer", vgpu_type="nvidia-700")
    (hd,) = hostdevs(daemon, op.result["vm_id"])
    env.fs.write(str(env.fs.sys / "bus" / "mdev" / "devices" / hd["uuid"] / "remove"), "1")
    assert not (env.fs.sys / "bus" / "mdev" / "devices" / hd["uuid"]).exists()  # "rebooted"
    daemon.devices_stub().RescanDevices(device_pb2.RescanDevicesRequest(host="gpu1"))
    assert (env.fs.sys / "bus" / "mdev" / "devices" / hd["uuid"]).exists()
    assert [e.kind for e in daemon.events_list("device.mdev_recreated")] == [
        "device.mdev_recreated"
    ]


def test_node_device_events_coalesce_into_one_rescan(daemon: Daemon) -> None:
    import time

    calls: list[str] = []
    real = daemon.core.devices.rescan
    daemon.core.devices.rescan = lambda host: calls.append(host) or real(host)  # type: ignore[method-assign]
    for _ in range(5):
        daemon.core.devices.request_rescan("gpu1", delay_s=0.2)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert calls == ["gpu1"]


def test_a_group_shared_with_a_claimed_device_is_refused_naming_it(daemon: Daemon) -> None:
    op = create(daemon, "l4-a", gpus=[vm_pb2.GpuRequest(model="L4")])
    assert op.state == SUCCEEDED, op.error
    # the two L4s share IOMMU group 70: the first VM got both, nothing is left for a second
    assert [c for c in claims(daemon) if "0000:8" in c[0]] == [
        ("gpu1/0000:86:00.0", "pci"),
        ("gpu1/0000:87:00.0", "pci"),
    ]
    got, details = code_of(
        daemon.vms.CreateVM,
        vm_pb2.CreateVMRequest(
            spec=vm_pb2.VMSpec(
                name="l4-b",
                vcpus=1,
                memory_mib=256,
                disks=[vm_pb2.DiskSpec(image="base")],
                gpus=[vm_pb2.GpuRequest(model="L4")],
            )
        ),
    )
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "gpu1/0000:86:00.0 in use" in details
