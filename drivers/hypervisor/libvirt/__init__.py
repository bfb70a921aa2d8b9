"""The libvirt hypervisor driver: vmmgr.ports.Hypervisor / HostConnection over libvirt.

    from drivers.hypervisor.libvirt import LibvirtHypervisor, LibvirtConfig, test_uri
    hv = LibvirtHypervisor(LibvirtConfig(keepalive_interval_s=5, keepalive_count=3))
    conn = hv.connect("qemu:///system", host_name="h1")  # or test_uri("/tmp/node.xml")

Typed domain/storage XML lives in ``drivers.hypervisor.libvirt.xml``.
"""

from drivers.hypervisor.libvirt.config import LibvirtConfig
from drivers.hypervisor.libvirt.connection import LibvirtConnection, vm_uuid
from drivers.hypervisor.libvirt.errors import map_libvirt_error, translated
from drivers.hypervisor.libvirt.events import event_loop_running, start_event_loop
from drivers.hypervisor.libvirt.hypervisor import LibvirtHypervisor, test_uri
from drivers.hypervisor.libvirt.xml.builder import CpuMode

__all__ = [
    "CpuMode",
    "LibvirtConfig",
    "LibvirtConnection",
    "LibvirtHypervisor",
    "event_loop_running",
    "map_libvirt_error",
    "start_event_loop",
    "test_uri",
    "translated",
    "vm_uuid",
]
