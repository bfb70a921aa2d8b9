"""Which device agent serves a host: the in-process one for this machine's own libvirt (the
single-machine default: the daemon is its own host agent), a remote HostAgentService where the
host names one, none otherwise (libvirt data alone)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from drivers.devices.agent_local import LocalDeviceAgent
from drivers.devices.mdev import LibvirtMdevBackend
from drivers.devices.nvml import NvmlDriver
from vmmgr.devices.ports import DeviceAgent
from vmmgr.state.models import Host

LOCAL_URIS = frozenset({"qemu:///system"})


def agent_factory(local_uris: frozenset[str] = LOCAL_URIS) -> Callable[[Host], DeviceAgent | None]:
    lock = threading.Lock()
    agents: dict[tuple[str, str, str], DeviceAgent] = {}
    nvml: list[NvmlDriver | None] = []

    def agent_for(host: Host) -> DeviceAgent | None:
        key = (host.name, host.uri, host.agent_address)
        with lock:
            if key in agents:
                return agents[key]
            agent: DeviceAgent | None = None
            if host.agent_address:
                from drivers.devices.agent_remote import RemoteDeviceAgent

                agent = RemoteDeviceAgent(host.name, host.agent_address)
            elif host.uri in local_uris:
                if not nvml:
                    nvml.append(NvmlDriver.try_open())  # None where there is no NVIDIA driver
                agent = LocalDeviceAgent(
                    host.name,
                    libvirt_source=host.uri,
                    nvml=nvml[0],
                    mdev_backend=LibvirtMdevBackend(uri=host.uri),
                )
            if agent is not None:
                agents[key] = agent
            return agent

    return agent_for
