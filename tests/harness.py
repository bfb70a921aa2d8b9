"""An in-process vmmgrd for tests: the real core and gRPC server on a free loopback port,
over any libvirt URI (test:///FILE for the fast tier, qemu:///system for the real tier)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from drivers.hypervisor.libvirt import LibvirtConfig, LibvirtHypervisor
from drivers.hypervisor.libvirt.migrator import LibvirtMigrator
from drivers.image_files import LocalImageFiles
from vmmgr.config import Config
from vmmgr.daemon import Core, build_core, build_server, no_agent
from vmmgr.ports import Hypervisor
from vmmgr.services.devices import AgentFactory
from vmmgr.v1 import (
    device_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    host_pb2_grpc,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    vm_pb2_grpc,
)

TEST_NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads>
    <active>8</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>16777216</memory>
</node>
"""


@dataclass
class Daemon:
    core: Core
    channel: grpc.Channel
    address: str
    config: Config

    @property
    def vms(self) -> vm_pb2_grpc.VMServiceStub:
        return vm_pb2_grpc.VMServiceStub(self.channel)

    @property
    def hosts(self) -> host_pb2_grpc.HostServiceStub:
        return host_pb2_grpc.HostServiceStub(self.channel)

    @property
    def images(self) -> image_pb2_grpc.ImageServiceStub:
        return image_pb2_grpc.ImageServiceStub(self.channel)

    @property
    def ops(self) -> operation_pb2_grpc.OperationServiceStub:
        return operation_pb2_grpc.OperationServiceStub(self.channel)

    @property
    def events(self) -> event_pb2_grpc.EventServiceStub:
        return event_pb2_grpc.EventServiceStub(self.channel)

    def devices_stub(self) -> device_pb2_grpc.DeviceServiceStub:
        return device_pb2_grpc.DeviceServiceStub(self.channel)

    def events_list(self, kind: str) -> list[event_pb2.Event]:
        return list(self.events.ListEvents(event_pb2.ListEventsRequest(kinds=[kind])).events)

    def wait(self, op: operation_pb2.Operation, timeout: float = 120) -> operation_pb2.Operation:
        resp = self.ops.WaitOperation(
            operation_pb2.WaitOperationRequest(id=op.id, timeout_seconds=timeout),
            timeout=timeout + 10,
        )
        assert resp.done, f"operation {op.id} did not finish in {timeout}s: {resp.operation}"
        return resp.operation


POOL_ROOT = Path("/var/tmp/vmmgr-tests")  # qemu (uid libvirt-qemu) must reach the pools


def test_config(tmp: Path, **overrides: object) -> Config:
    """A daemon config with its own store in ``tmp`` and uniquely named storage pools."""
    tag = uuid.uuid4().hex[:8]
    pools = POOL_ROOT / tag
    pools.mkdir(parents=True, exist_ok=True)
    for p in (POOL_ROOT, pools):
        p.chmod(0o755)
    cfg = Config(
        state_dir=tmp / "state",
        image_pool=f"t{tag}-images",
        image_pool_path=str(pools / "images"),
        vm_pool=f"t{tag}-vms",
        vm_pool_path=str(pools / "vms"),
        resync_interval_s=3600,
        shutdown_timeout_s=10,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


test_config.__test__ = False  # type: ignore[attr-defined]


@contextmanager
def running_daemon(
    config: Config,
    agent_for: AgentFactory = no_agent,
    wrap: Callable[[Hypervisor], Hypervisor] = lambda hv: hv,
) -> Iterator[Daemon]:
    """``wrap``: puts a test's own seam around the libvirt hypervisor (what hosts answer)."""
    hv = wrap(LibvirtHypervisor(LibvirtConfig(keepalive_interval_s=2, keepalive_count=3)))
    core = build_core(config, hv, LocalImageFiles(), agent_for, LibvirtMigrator())
    core.start()
    server, port = build_server(core, "127.0.0.1:0", workers=8)
    server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        yield Daemon(core, channel, address, config)
    finally:
        channel.close()
        server.stop(grace=1).wait()
        core.stop()


def remove_pools(uri: str, config: Config, *domains: str) -> None:
    """Remove what a test daemon left on a real libvirtd: the named domains (if a test failed
    before deleting them), the pools it created, and their directories."""
    for dom in domains:
        for cmd in ("destroy", "undefine"):
            subprocess.run(["virsh", "-c", uri, cmd, dom], capture_output=True, check=False)
    for name in (config.vm_pool, config.image_pool):
        for cmd in ("pool-destroy", "pool-undefine"):
            subprocess.run(["virsh", "-c", uri, cmd, name], capture_output=True, check=False)
    shutil.rmtree(Path(config.vm_pool_path).parent, ignore_errors=True)


def make_qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path
