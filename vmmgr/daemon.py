"""vmmgrd: wires store, drivers, services, policies and the gRPC server together.

This is the one module of vmmgr/ that imports drivers/ (and policies/).
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from apscheduler.schedulers.background import BackgroundScheduler
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from policies.recover import CrashPolicy, DetectorConfig, FenceGuardConfig
from policies.wiring import Policies, build_policies
from vmmgr import config as config_mod
from vmmgr.api import security
from vmmgr.api.admin import AdminServicer
from vmmgr.api.agent import HostAgentServicer
from vmmgr.api.devices import DeviceServicer
from vmmgr.api.hosts import HostServicer
from vmmgr.api.images import ImageServicer
from vmmgr.api.operations import EventServicer, OperationServicer
from vmmgr.api.planned import planned
from vmmgr.api.policies import PolicyServicer
from vmmgr.api.vms import VMServicer
from vmmgr.config import Config
from vmmgr.devices.ports import DeviceAgent
from vmmgr.errors import AlreadyExists, Unavailable, Unimplemented, VmmgrError
from vmmgr.logs import setup_logging
from vmmgr.metrics import Metrics
from vmmgr.ports import Hypervisor, ImageFiles, Migrator
from vmmgr.scheduler import Scheduler
from vmmgr.services.accelerators import Accelerators
from vmmgr.services.connections import ConnectionManager
from vmmgr.services.devices import AgentFactory, DeviceService
from vmmgr.services.events import EventBus, EventRecord, store_event
from vmmgr.services.groups import GroupService
from vmmgr.services.hosts import HostService
from vmmgr.services.images import ImageService
from vmmgr.services.migrations import MigrationService
from vmmgr.services.operations import Operations
from vmmgr.services.vms import VMService
from vmmgr.state import Store, open_store, repo
from vmmgr.state.models import Host
from vmmgr.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

log = logging.getLogger("vmmgrd")
LOCAL_URI = "qemu:///system"

SERVICE_NAMES = [
    vm_pb2.DESCRIPTOR.services_by_name["VMService"].full_name,
    host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
    image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    operation_pb2.DESCRIPTOR.services_by_name["OperationService"].full_name,
    event_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["HostAgentService"].full_name,
]


@dataclass
class Core:
    """Everything but the gRPC server: what tests and the daemon share."""

    config: Config
    store: Store
    events: EventBus
    ops: Operations
    conns: ConnectionManager
    hosts: HostService
    images: ImageService
    vms: VMService
    devices: DeviceService
    migrations: MigrationService
    policies: Policies
    jobs: BackgroundScheduler = field(default_factory=lambda: BackgroundScheduler(daemon=True))
    _seen_foreign: set[str] = field(default_factory=set)

    def start(self) -> None:
        """Recover from a previous run, connect hosts, reconcile, start periodic jobs."""
        with self.store.session() as s:
            repo.ensure_project(s, "default")
        self.hosts.load()
        self.vms.recover_interrupted(self.ops.interrupted())
        self.resync()
        self.jobs.add_job(
            self.resync,
            "interval",
            seconds=self.config.resync_interval_s,
            id="resync",
            max_instances=1,
            coalesce=True,
        )
        self.jobs.start()
        self.policies.runtime.start()

    def resync(self) -> None:
        """Reconcile every host: reconnect, record facts, compare domains with the store."""
        for name in self.conns.names():
            try:
                self.conns.get(name)
                self.vms.resync_host(name, self._seen_foreign)
            except Unavailable as exc:
                self.hosts.connection_down(name, exc.message)
            except VmmgrError as exc:
                log.warning("resync of %s failed: %s", name, exc)

    def stop(self) -> None:
        self.policies.runtime.shutdown(wait=False)
        if self.jobs.running:
            self.jobs.shutdown(wait=False)
        self.events.close()
        self.ops.shutdown()
        self.conns.close()
        self.store.close()


def no_agent(host: Host) -> DeviceAgent | None:
    return None


class _NoMigrator:
    """For cores built without a hypervisor that can migrate (unit tests)."""

    def live(self, *args: object, **kwargs: object) -> object:
        raise Unimplemented("this daemon was built without a migrator")

    cold = live


def build_core(
    config: Config,
    hypervisor: Hypervisor,
    image_files: ImageFiles,
    agent_for: AgentFactory = no_agent,
    migrator: Migrator | None = None,
) -> Core:
    store = open_store(config.db_url or None, config.state_dir)

    def persist(rec: EventRecord) -> int:
        with store.session() as s:
            return store_event(s, rec)

    events = EventBus(persist)
    ops = Operations(store, events, workers=config.operation_workers)
    holder: dict[str, object] = {}
    conns = ConnectionManager(
        hypervisor,
        on_event=lambda e: holder["vms"].on_domain_event(e),  # type: ignore[attr-defined]
        on_up=lambda n: holder["hosts"].connection_up(n),  # type: ignore[attr-defined]
        on_down=lambda n, err: holder["hosts"].connection_down(n, err),  # type: ignore[attr-defined]
        on_devices_changed=lambda n: holder["devices"].request_rescan(n),  # type: ignore[attr-defined]
    )
    hosts = HostService(store, conns, events, config)
    images = ImageService(store, conns, ops, events, image_files, config)
    devices = DeviceService(store, conns, events, ops, agent_for)
    vms = VMService(
        store,
        conns,
        ops,
        events,
        images,
        Scheduler(config.scheduler()),
        config,
        devices,
        Accelerators(store, config.fpga_profile_map()),
        hypervisor,
    )
    hosts.on_registered.append(devices.rescan)
    holder.update(vms=vms, hosts=hosts, devices=devices)
    migrations = MigrationService(
        store,
        ops,
        events,
        vms,
        hosts,
        Scheduler(config.scheduler()),
        migrator or _NoMigrator(),
        config,
    )
    policies = build_policies(
        store,
        ops,
        vms,
        migrations,
        Scheduler(config.scheduler()),
        agent_for,
        fence=_hook(config.fence_command, store),
        power_off=_hook(config.power_command, store),
        detector=DetectorConfig(config.recover_heartbeat_timeout_s, config.recover_grace_s),
        guard=FenceGuardConfig(max_share=config.fence_max_share),
        crash=CrashPolicy(backoff_base_s=config.crash_backoff_s),
    )
    return Core(
        config, store, events, ops, conns, hosts, images, vms, devices, migrations, policies
    )


def _hook(argv: list[str], store: Store) -> Callable[[str], None] | None:
    """A host hook (fence, power off) from an argv template; the side effect is drivers'."""
    if not argv:
        return None
    from urllib.parse import urlsplit

    from drivers.fence import FenceCommand, fence_host

    command = FenceCommand(tuple(argv))

    def run(host: str) -> None:
        with store.read_session() as s:
            address = urlsplit(repo.get_host(s, host).uri).hostname or host
        fence_host(command, host=host, address=address)

    return run


def build_server(
    core: Core,
    listen: str,
    workers: int = 16,
    *,
    metrics: Metrics | None = None,
    agent: HostAgentServicer | None = None,
) -> tuple[grpc.Server, int]:
    # --- security & observability (issue 7): TLS checks, auth/audit/metrics interceptor ---
    sec = security.prepare(core.config, core.store, listen, metrics)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        interceptors=[sec.interceptor],
    )
    # --- end issue 7 block ---
    vm_pb2_grpc.add_VMServiceServicer_to_server(
        VMServicer(core.vms, GroupService(core.store), core.migrations), server
    )
    host_pb2_grpc.add_HostServiceServicer_to_server(
        HostServicer(core.hosts, core.vms, core.migrations), server
    )
    image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(core.images), server)
    operation_pb2_grpc.add_OperationServiceServicer_to_server(OperationServicer(core.ops), server)
    event_pb2_grpc.add_EventServiceServicer_to_server(
        EventServicer(core.store, core.events), server
    )
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(core.devices), server)
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyServicer(core.policies, core.store, core.ops, core.vms, GroupService(core.store)),
        server,
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(core.store), server)
    agent_pb2_grpc.add_HostAgentServiceServicer_to_server(
        agent
        or planned(
            agent_pb2_grpc.HostAgentServiceServicer,
            "a host agent on this daemon (start vmmgrd on the host itself)",
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *SERVICE_NAMES]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = security.add_ports(server, sec, listen, core.config.unix_socket)  # issue 7
    return server, port


def _startup_conveniences(core: Core) -> None:
    for item in core.config.register_hosts:
        name, _, uri = item.partition("=")
        try:
            core.hosts.register(name, uri)
            log.info("registered host %s (%s)", name, uri)
        except AlreadyExists:
            log.info("host %s already registered", name)
        except VmmgrError as exc:
            log.error("cannot register host %s (%s): %s", name, uri, exc)
    for item in core.config.import_images:
        name, _, path = item.partition("=")
        if any(i.name == name for i in core.images.list_images()):
            continue
        try:
            op = core.images.import_image(name, path)
            done, ok = core.ops.wait(op.id, 600)
            log.info("image %s import: %s %s", name, done.state, done.error_message)
        except VmmgrError as exc:
            log.error("cannot import image %s from %s: %s", name, path, exc)


def _local_agent(
    config: Config, hypervisor: Hypervisor, agents: AgentFactory
) -> HostAgentServicer | None:
    """The host agent role: this daemon answers NVML / MIG / FPGA / mdev calls for its own
    machine (in the single-machine default it is both controller and agent)."""
    agent = agents(Host(name=socket.gethostname(), uri=LOCAL_URI))
    if agent is None:
        return None

    @functools.cache
    def host_uuid() -> str:
        conn = hypervisor.connect(LOCAL_URI, host_name="agent")
        try:
            return conn.host_info().host_uuid
        finally:
            conn.close()

    return HostAgentServicer(agent, host_uuid, time.time(), fpga_profiles=config.fpga_profile_map)


def main(argv: Sequence[str] | None = None) -> int:
    config = config_mod.load(list(argv) if argv is not None else None)
    setup_logging(config.log_level, json_lines=config.log_json)
    # vmmgrd's threads (gRPC handlers, operation workers, libvirt events) hand the GIL to one
    # another all the time; a thread that becomes runnable waits less with a shorter interval
    # than the default 5 ms (bench/create: about 5% off create -> running)
    sys.setswitchinterval(0.001)
    from drivers.devices.agents import agent_factory
    from drivers.hypervisor.libvirt import LibvirtConfig, LibvirtHypervisor
    from drivers.hypervisor.libvirt.migrator import LibvirtMigrator
    from drivers.image_files import LocalImageFiles

    hypervisor = LibvirtHypervisor(
        LibvirtConfig(
            keepalive_interval_s=config.keepalive_interval_s, keepalive_count=config.keepalive_count
        )
    )
    agents = agent_factory()
    core = build_core(config, hypervisor, LocalImageFiles(), agents, LibvirtMigrator())
    core.start()
    metrics = Metrics(core.store)  # issue 7: one registry for gRPC and /metrics
    server, port = build_server(
        core,
        config.listen,
        config.rpc_workers,
        metrics=metrics,
        agent=_local_agent(config, hypervisor, agents),
    )
    server.start()
    metrics_server = security.serve_metrics(config, metrics)
    log.info("vmmgrd listening on %s (port %d), store %s", config.listen, port, core.store.backend)
    _startup_conveniences(core)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("vmmgrd stopping")
    server.stop(grace=5).wait()
    if metrics_server is not None:
        metrics_server.stop()
    core.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
