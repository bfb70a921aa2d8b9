"""Scan one host's devices: libvirt node devices, plus sysfs and NVML where they are local.

``scan_inventory`` takes a libvirt URI, an open ``libvirt.virConnect``, or anything with
``list_node_device_xml()`` (the hypervisor driver's HostConnection). sysfs and NVML describe
the machine this process runs on, so pass them only when that is the scanned host (the agent).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import libvirt

from drivers.devices.nvml import NvmlDriver
from drivers.devices.sysfs import Sysfs
from vmmgr.devices.inventory import build_inventory
from vmmgr.devices.model import GpuFacts, HostInventory
from vmmgr.devices.nodedev_xml import NodeDevice
from vmmgr.errors import DriverError, Unavailable

log = logging.getLogger(__name__)


class NodeDeviceXmlSource(Protocol):
    def list_node_device_xml(self) -> list[str]: ...


def node_device_xml(conn: Any) -> list[str]:
    """XML of every node device; devices that vanish while listing are skipped."""
    try:
        devices = conn.listAllDevices(0)
    except libvirt.libvirtError as exc:
        raise DriverError(f"listing node devices failed: {exc}") from exc
    out: list[str] = []
    for dev in devices:
        try:
            out.append(dev.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NODE_DEVICE:
                continue
            raise DriverError(f"reading node device {dev.name()} failed: {exc}") from exc
    return out


def scan_inventory(
    source: str | Any,
    *,
    host: str | None = None,
    sysfs_root: str | Path | None = None,
    nvml: NvmlDriver | None = None,
) -> HostInventory:
    if isinstance(source, str):
        try:
            conn = libvirt.open(source)
        except libvirt.libvirtError as exc:
            raise Unavailable(f"cannot open {source}: {exc}") from exc
        try:
            return scan_inventory(conn, host=host, sysfs_root=sysfs_root, nvml=nvml)
        finally:
            conn.close()
    if hasattr(source, "list_node_device_xml"):
        xmls = source.list_node_device_xml()
        name = host or source.host_info().hostname
    else:
        xmls = node_device_xml(source)
        name = host or source.getHostname()
    nodes = [NodeDevice.from_xml(x) for x in xmls]
    sysfs = Sysfs(sysfs_root) if sysfs_root is not None else None
    gpus: list[GpuFacts] = []
    version = None
    if nvml is not None:
        gpus = nvml.gpu_facts()
        version = nvml.driver_version()
    return build_inventory(
        name,
        nodes,
        sysfs=sysfs.all_pci_facts() if sysfs else None,
        sysfs_mdevs=sysfs.mdevs() if sysfs else (),
        gpus=gpus,
        nvml_driver_version=version,
    )
