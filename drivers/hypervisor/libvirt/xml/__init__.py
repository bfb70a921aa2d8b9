"""Typed libvirt XML: one frozen dataclass per element, ``parse(el)`` and ``build()`` together.

Entry points: ``domain_xml_from_spec`` (DomainSpec -> XML), ``parse_domain`` (XML -> Domain),
``vmmgr_metadata`` (XML -> (vm_id, owner) | None), ``HostCapabilities.from_xml``.
"""

from drivers.hypervisor.libvirt.xml.builder import (
    HEARTBEAT_CHANNEL,
    CpuMode,
    choose_cpu,
    cpuset_string,
    domain_from_spec,
    domain_xml_from_spec,
)
from drivers.hypervisor.libvirt.xml.capabilities import (
    Guest,
    HostCapabilities,
    NumaCell,
    cells_from_node_info,
)
from drivers.hypervisor.libvirt.xml.devices import (
    Channel,
    Console,
    Devices,
    Disk,
    Hostdev,
    HostdevMdev,
    HostdevPci,
    Interface,
    MemBalloon,
    Serial,
    Watchdog,
)
from drivers.hypervisor.libvirt.xml.domain import Domain, parse_domain, vmmgr_metadata
from drivers.hypervisor.libvirt.xml.guest_os import Clock, Features, Os, OsType
from drivers.hypervisor.libvirt.xml.metadata import VMMGR_NS, Metadata, VmmgrInstance
from drivers.hypervisor.libvirt.xml.resources import (
    Cpu,
    CpuFeature,
    CpuModel,
    CurrentMemory,
    Memory,
    NumaTune,
    Vcpu,
)
from drivers.hypervisor.libvirt.xml.storage import BackingStore, StoragePool, StorageVolume

__all__ = [
    "HEARTBEAT_CHANNEL",
    "VMMGR_NS",
    "BackingStore",
    "Channel",
    "Clock",
    "Console",
    "Cpu",
    "CpuFeature",
    "CpuMode",
    "CpuModel",
    "CurrentMemory",
    "Devices",
    "Disk",
    "Domain",
    "Features",
    "Guest",
    "HostCapabilities",
    "Hostdev",
    "HostdevMdev",
    "HostdevPci",
    "Interface",
    "MemBalloon",
    "Memory",
    "Metadata",
    "NumaCell",
    "NumaTune",
    "Os",
    "OsType",
    "Serial",
    "StoragePool",
    "StorageVolume",
    "Vcpu",
    "VmmgrInstance",
    "Watchdog",
    "cells_from_node_info",
    "choose_cpu",
    "cpuset_string",
    "domain_from_spec",
    "domain_xml_from_spec",
    "parse_domain",
    "vmmgr_metadata",
]
