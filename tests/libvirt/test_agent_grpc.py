"""The host agent over gRPC: RemoteDeviceAgent -> HostAgentService -> LocalDeviceAgent.

The agent side is real code on the libvirt test driver (the GPU host node XML), the fake sysfs
tree and the fake NVML; the server is a real in-process gRPC server on a loopback port.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from drivers.devices.agent_local import LocalDeviceAgent
from drivers.devices.agent_remote import RemoteDeviceAgent
from drivers.devices.mdev import SysfsMdevBackend
from drivers.devices.nvml import NvmlDriver
from tests.fixtures.gpu_host import GPU_HOST_XML
from tests.fixtures.nvml import FakeGpu, FakeNvml
from tests.fixtures.sysfs import EXISTING_MDEV, FakeSysfs, gpu_host_sysfs
from vmmgr.api.agent import HostAgentServicer
from vmmgr.devices.model import FpgaProfile, HostInventory, MigPlacement
from vmmgr.errors import (
    DeadlineExceeded,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from vmmgr.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.libvirt

URI = "test://" + str(GPU_HOST_XML)
H100 = "0000:3b:00.0"
A100 = "0000:5e:00.0"
FPGA = "0000:af:00.0"
HOST_UUID = "6f0e3c1a-9a63-4e0b-8d3e-6f2a1c9b7d10"
STARTED_AT = 1_000.0


def h100_here(**changes: object) -> FakeGpu:
    gpu = FakeGpu(bus_id="00000000:3B:00.0")
    for k, v in changes.items():
        setattr(gpu, k, v)
    return gpu


def a100_vgpu_here() -> FakeGpu:
    """An A100 with NVIDIA's vGPU manager at the fixture host's 5e:00.0 (vGPU lists known)."""
    return FakeGpu(
        name="NVIDIA A100-SXM4-80GB",
        uuid="GPU-5b8c1f4e-0000-4000-8000-00000000a100",
        bus_id="00000000:5E:00.0",
        pci_device_id=0x20B210DE,
        virtualization_mode=3,
        host_vgpu_mode=1,
        supported_vgpus=[700, 701, 702],
        creatable_vgpus=[],  # known and empty: must not come back as "unknown"
        active_vgpus=[],
        numa_node=0,
        vgpu_type_names={700: "GRID A100D-4C", 701: "GRID A100D-8C", 702: "GRID A100D-20C"},
        vgpu_type_max={700: 20, 701: 10, 702: 4},
    )


@pytest.fixture
def fs(tmp_path: Path) -> FakeSysfs:
    return gpu_host_sysfs(tmp_path / "root")


def local_agent(fs: FakeSysfs, fake: FakeNvml | None) -> LocalDeviceAgent:
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


class Served:
    """A HostAgentService on a loopback port; ``remote`` talks to it."""

    def __init__(
        self,
        agent: Any,
        *,
        fpga_profiles: Mapping[str, FpgaProfile] | None = None,
        clock: Callable[[], float] = lambda: STARTED_AT + 42.5,
        interceptors: tuple[grpc.ServerInterceptor, ...] = (),
    ) -> None:
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
        self.servicer = HostAgentServicer(
            agent, lambda: HOST_UUID, STARTED_AT, fpga_profiles=fpga_profiles, clock=clock
        )
        agent_pb2_grpc.add_HostAgentServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()
        self.remote = RemoteDeviceAgent("gpu1", self.address, timeout_s=10)
        self.stub = agent_pb2_grpc.HostAgentServiceStub(self.remote._channel)

    def close(self) -> None:
        self.remote.close()
        self.server.stop(None)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(agent: Any, **kw: Any) -> Served:
        s = Served(agent, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


# ----------------------------------------------------------------------------- inventory, facts


def test_inventory_round_trip_equals_local(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    local = local_agent(fs, FakeNvml([h100_here(), a100_vgpu_here()]))
    remote = serve(local).remote
    want = local.inventory()
    got = remote.inventory()
    assert isinstance(got, HostInventory)
    assert got == want
    # the comparison covers what matters: devices with unknowns, mdev types, mdevs, NVML facts
    assert len(got.accelerators) == 10 and got.mdevs[0].uuid == EXISTING_MDEV
    a100 = got.device(A100)
    assert a100 is not None and {t.max_instances for t in a100.mdev_types} == {20, 10, 4}
    assert got.device("0000:b1:00.0").vfs == ("0000:b1:00.1", "0000:b1:00.2")  # type: ignore[union-attr]
    assert {g.address for g in got.gpus} == {H100, A100}
    assert got.nvml_driver_version == "580.159.04"


def test_inventory_without_nvml_round_trips(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    local = local_agent(fs, None)
    got = serve(local).remote.inventory()
    assert got == local.inventory()
    assert got.gpus == () and got.nvml_driver_version is None


def test_inventory_carries_the_controllers_host_name(
    fs: FakeSysfs, serve: Callable[..., Served]
) -> None:
    s = serve(local_agent(fs, None))
    other = RemoteDeviceAgent("gpu1-as-registered", s.address)
    try:
        assert other.inventory().host == "gpu1-as-registered"
    finally:
        other.close()


def test_gpu_facts_round_trip_keeps_unknowns_unknown(
    fs: FakeSysfs, serve: Callable[..., Served]
) -> None:
    local = local_agent(fs, FakeNvml([h100_here(), a100_vgpu_here()]))
    got = serve(local).remote.gpu_facts()
    assert got == local.gpu_facts()
    h100, a100 = got
    # the recorded H100 answered Not Supported for these: they stay None, not 0/False/()
    assert h100.retired_pages_pending is None
    assert h100.host_vgpu_mode is None
    assert h100.vgpu_supported is None and h100.vgpu_creatable is None
    assert h100.numa_node is None
    # known values (zeros included) stay known
    assert h100.temperature_c == 36 and h100.utilization_gpu_pct == 0
    assert h100.ecc_uncorrected_volatile == 0 and h100.ecc_enabled is True
    assert h100.remapped_rows is not None and h100.remapped_rows.pending is False
    assert h100.mig is not None and h100.mig.enabled is False and len(h100.mig.profiles) == 7
    assert a100.vgpu_creatable == () and a100.vgpu_supported is not None
    assert [t.max_instances for t in a100.vgpu_supported] == [20, 10, 4]
    assert a100.numa_node == 0


def test_gpu_facts_summary_fields(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    """The DeviceService-style summary (telemetry, mig, problems) the old fields carry."""
    s = serve(local_agent(fs, FakeNvml([h100_here(ecc_uncorrected_volatile=7)])))
    (g,) = s.stub.GetGpuFacts(agent_pb2.GetGpuFactsRequest()).gpus
    assert g.address == H100
    assert any("uncorrected ECC" in p for p in g.problems)
    assert g.telemetry.power_w == pytest.approx(123.965)
    assert g.telemetry.HasField("temperature_c") and g.telemetry.temperature_c == 36
    assert g.telemetry.HasField("ecc_uncorrected") and g.telemetry.ecc_uncorrected == 7
    assert g.mig.total_slices == 7 and not g.mig.enabled
    assert not g.HasField("numa_node") and not g.HasField("retired_pages_pending")


def test_no_nvml_means_no_gpu_facts(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    assert serve(local_agent(fs, None)).remote.gpu_facts() == []


# ----------------------------------------------------------------------------- mdev


def test_create_then_remove_mdev(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    remote = serve(local_agent(fs, None)).remote
    rec = remote.create_mdev("0000:d8:00.0", "nvidia-471")
    assert (rec.parent, rec.type_id, rec.via) == ("0000:d8:00.0", "nvidia-471", "sysfs")
    assert rec.parent_driver == "nvidia" and rec.persistent is False
    assert fs.available("0000:d8:00.0", "nvidia-471") == 4
    assert rec.uuid in {m.uuid for m in remote.inventory().mdevs}
    remote.remove_mdev(rec.uuid)
    assert fs.available("0000:d8:00.0", "nvidia-471") == 5
    assert rec.uuid not in {m.uuid for m in remote.inventory().mdevs}


def test_create_mdev_with_a_given_uuid(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    remote = serve(local_agent(fs, None)).remote
    uuid = "0d6c1b8e-2f1a-4c3e-9a4b-5e6f7a8b9c0d"
    assert remote.create_mdev("d8:00.0", "nvidia-470", uuid).uuid == uuid
    assert (fs.sys / "bus" / "mdev" / "devices" / uuid).is_symlink()


def test_mdev_errors_keep_class_message_and_field(
    fs: FakeSysfs, serve: Callable[..., Served]
) -> None:
    remote = serve(local_agent(fs, None)).remote
    with pytest.raises(NotFound, match="does not exist"):
        remote.remove_mdev("0d6c1b8e-2f1a-4c3e-9a4b-5e6f7a8b9c0d")
    with pytest.raises(ResourceExhausted) as exhausted:
        remote.create_mdev(A100, "nvidia-701")  # no instances left
    assert exhausted.value.field == "vgpu_type"
    assert exhausted.value.message == "0000:5e:00.0: no nvidia-701 instances left"
    with pytest.raises(InvalidArgument) as bad:
        remote.create_mdev("0000:d8:00.0", "nvidia-471", "nope")
    assert bad.value.field == "uuid" and str(bad.value) == "uuid: not a UUID: 'nope'"
    with pytest.raises(InvalidArgument) as missing:
        remote.remove_mdev("")
    assert missing.value.field == "uuid"


# ----------------------------------------------------------------------------- MIG


def test_mig_geometry_and_mode(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    fake = FakeNvml([h100_here(mig_mode=[1, 1])])
    remote = serve(local_agent(fs, fake)).remote
    f = remote.apply_mig_geometry(H100, [MigPlacement("4g.40gb", 0), MigPlacement("3g.40gb", 4)])
    assert sorted((i.profile, i.start) for i in f.instances) == [("3g.40gb", 4), ("4g.40gb", 0)]
    assert sorted((gi.start, gi.size) for gi in fake.gpus[0].gis.values()) == [(0, 4), (4, 4)]
    f = remote.apply_mig_geometry(H100, [MigPlacement("4g.40gb", 0), MigPlacement("1g.10gb")])
    assert sorted(i.profile for i in f.instances) == ["1g.10gb", "4g.40gb"]
    off = remote.set_mig_mode(H100, False)
    assert off.enabled is True and off.pending is False
    assert fake.gpus[0].mig_mode == [1, 0]


def test_mig_busy_gpu_is_failed_precondition(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    fake = FakeNvml([h100_here(mig_mode=[1, 1])])
    remote = serve(local_agent(fs, fake)).remote
    remote.apply_mig_geometry(H100, [MigPlacement("7g.80gb", 0)])
    fake.gpus[0].processes = [4242]
    with pytest.raises(FailedPrecondition, match="busy"):
        remote.apply_mig_geometry(H100, [MigPlacement("1g.10gb", 0)])
    assert [gi.profile_id for gi in fake.gpus[0].gis.values()] == [0]  # untouched


def test_mig_unknown_profile_and_no_nvml(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    remote = serve(local_agent(fs, FakeNvml([h100_here(mig_mode=[1, 1])]))).remote
    with pytest.raises(InvalidArgument) as bad:
        remote.apply_mig_geometry(H100, [MigPlacement("9g.99gb")])
    assert bad.value.field == "profiles[0]"
    bare = serve(local_agent(fs, None)).remote
    with pytest.raises(FailedPrecondition, match="no NVML"):
        bare.set_mig_mode(H100, True)


def test_configure_mig_with_plain_profiles(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    """The original request shape (profile names only) still works."""
    s = serve(local_agent(fs, FakeNvml([h100_here(mig_mode=[1, 1])])))
    resp = s.stub.ConfigureMig(
        agent_pb2.ConfigureMigRequest(address=H100, profiles=["3g.40gb", "3g.40gb"])
    )
    assert list(resp.mig.instances) == ["3g.40gb", "3g.40gb"]
    assert sorted(i.start for i in resp.state.instances) == [0, 4]
    with pytest.raises(grpc.RpcError) as both:
        s.stub.ConfigureMig(
            agent_pb2.ConfigureMigRequest(
                address=H100,
                profiles=["1g.10gb"],
                placements=[agent_pb2.AgentMigPlacement(profile="1g.10gb")],
            )
        )
    assert both.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ("vmmgr-error-field", "placements") in both.value.trailing_metadata()


# ----------------------------------------------------------------------------- FPGA


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A real program command: records its argv next to itself."""
    t = tmp_path / "xbutil"
    t.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/ran"\necho programmed "$3"\n')
    t.chmod(t.stat().st_mode | stat.S_IXUSR)
    return t


@pytest.fixture
def bitstream(tmp_path: Path) -> Path:
    b = tmp_path / "u250.xclbin"
    b.write_bytes(b"\x00xclbin2\x00" * 100)
    return b


def agent_profile(tool: Path, bitstream: Path, *, sha256: str | None = None) -> FpgaProfile:
    return FpgaProfile(
        "u250",
        str(bitstream),
        sha256 or hashlib.sha256(bitstream.read_bytes()).hexdigest(),
        (str(tool), "program", "-d", "{device}", "-u", "{bitstream}"),
    )


def test_program_fpga_uses_the_agents_profile(
    fs: FakeSysfs, serve: Callable[..., Served], tool: Path, bitstream: Path
) -> None:
    mine = agent_profile(tool, bitstream)
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": mine}).remote
    # the controller's copy names the same profile and digest; its command is never sent
    theirs = FpgaProfile("u250", "/elsewhere.xclbin", mine.sha256, ("/bin/false", "{device}"))
    result = remote.program_fpga("af:00.0", theirs)
    ran = (tool.parent / "ran").read_text().split()
    assert ran == ["program", "-d", FPGA, "-u", str(bitstream)]
    assert result.argv == (str(tool), "program", "-d", FPGA, "-u", str(bitstream))
    assert (result.device, result.profile, result.bitstream_sha256) == (FPGA, "u250", mine.sha256)
    assert result.output == f"programmed {FPGA}\n"


def test_program_fpga_sha256_mismatch_on_the_agent(
    fs: FakeSysfs, serve: Callable[..., Served], tool: Path, bitstream: Path
) -> None:
    stale = agent_profile(tool, bitstream, sha256="0" * 64)  # the file on disk changed
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": stale}).remote
    with pytest.raises(FailedPrecondition, match="does not match"):
        remote.program_fpga(FPGA, stale)
    assert not (tool.parent / "ran").exists()


def test_program_fpga_controller_and_agent_disagree(
    fs: FakeSysfs, serve: Callable[..., Served], tool: Path, bitstream: Path
) -> None:
    mine = agent_profile(tool, bitstream)
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": mine}).remote
    theirs = FpgaProfile("u250", str(bitstream), "a" * 64, mine.command)
    with pytest.raises(FailedPrecondition) as exc:
        remote.program_fpga(FPGA, theirs)
    assert exc.value.field == "expected_sha256"
    assert not (tool.parent / "ran").exists()


def test_program_fpga_unknown_profile_or_device(
    fs: FakeSysfs, serve: Callable[..., Served], tool: Path, bitstream: Path
) -> None:
    mine = agent_profile(tool, bitstream)
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": mine}).remote
    with pytest.raises(NotFound, match="no FPGA profile 'u280'") as unknown:
        remote.program_fpga(FPGA, FpgaProfile("u280", str(bitstream), mine.sha256, ("x",)))
    assert unknown.value.field == "profile"
    with pytest.raises(NotFound, match="no PCI device 0000:ee:00.0"):
        remote.program_fpga("0000:ee:00.0", mine)
    assert not (tool.parent / "ran").exists()


def test_program_fpga_failing_command_is_driver_error(
    fs: FakeSysfs, serve: Callable[..., Served], tmp_path: Path, bitstream: Path
) -> None:
    bad = tmp_path / "fail"
    bad.write_text('#!/bin/sh\necho "card busy" >&2\nexit 3\n')
    bad.chmod(bad.stat().st_mode | stat.S_IXUSR)
    profile = agent_profile(bad, bitstream)
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": profile}).remote
    with pytest.raises(DriverError, match=r"exit 3.*card busy"):
        remote.program_fpga(FPGA, profile)


def test_program_fpga_profiles_callable_is_read_per_call(
    fs: FakeSysfs, serve: Callable[..., Served], tool: Path, bitstream: Path
) -> None:
    profiles: dict[str, FpgaProfile] = {}
    s = serve(local_agent(fs, None))
    s.servicer._profiles = lambda: profiles  # as the daemon would pass config.fpga_profile_map
    mine = agent_profile(tool, bitstream)
    with pytest.raises(NotFound):
        s.remote.program_fpga(FPGA, mine)
    profiles["u250"] = mine  # a config reload
    assert s.remote.program_fpga(FPGA, mine).device == FPGA


# ----------------------------------------------------------------------------- liveness


def test_heartbeat(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    s = serve(local_agent(fs, None))
    assert s.remote.heartbeat() == pytest.approx(42.5)
    assert s.remote.last_host_uuid == HOST_UUID
    resp = s.stub.Heartbeat(agent_pb2.HeartbeatRequest())
    assert resp.host == "gpu1"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_agent_is_unavailable() -> None:
    remote = RemoteDeviceAgent("gpu9", f"127.0.0.1:{_closed_port()}", timeout_s=3)
    try:
        with pytest.raises(Unavailable, match="host agent of gpu9 .* unreachable"):
            remote.inventory()
        with pytest.raises(Unavailable):
            remote.create_mdev("0000:d8:00.0", "nvidia-471")
        assert remote.heartbeat() is None
        assert remote.last_host_uuid is None
    finally:
        remote.close()


class _Stuck:
    """A DeviceAgent whose inventory hangs until released (an agent wedged in a driver)."""

    host = "gpu1"

    def __init__(self) -> None:
        self.release = threading.Event()

    def inventory(self) -> HostInventory:
        self.release.wait(10)
        return HostInventory("gpu1", ())


def test_agent_past_the_deadline_is_unavailable(serve: Callable[..., Served]) -> None:
    stuck = _Stuck()
    s = serve(stuck)
    slow = RemoteDeviceAgent("gpu1", s.address, timeout_s=0.3)
    try:
        with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
            slow.inventory()
    finally:
        stuck.release.set()
        slow.close()


class _Recorder(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.metadata.extend((m.key, m.value) for m in details.invocation_metadata)
        return continuation(details)


def test_metadata_goes_with_every_call(fs: FakeSysfs, serve: Callable[..., Served]) -> None:
    rec = _Recorder()
    s = serve(local_agent(fs, None), interceptors=(rec,))
    remote = RemoteDeviceAgent("gpu1", s.address, metadata=[("authorization", "Bearer t0k")])
    try:
        remote.heartbeat()
        remote.gpu_facts()
    finally:
        remote.close()
    assert rec.metadata.count(("authorization", "Bearer t0k")) == 2


def test_program_timeout_on_the_agent_stays_deadline_exceeded(
    fs: FakeSysfs, serve: Callable[..., Served], tmp_path: Path, bitstream: Path
) -> None:
    """The agent's own DEADLINE_EXCEEDED (the program command timed out) is not "unreachable"."""
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    profile = dataclasses.replace(agent_profile(slow, bitstream), timeout_s=0.3)
    remote = serve(local_agent(fs, None), fpga_profiles={"u250": profile}).remote
    with pytest.raises(DeadlineExceeded, match="longer than 0.3s"):
        remote.program_fpga(FPGA, profile)
