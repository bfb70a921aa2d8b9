"""Per-driver settings of the libvirt hypervisor driver."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.hypervisor.libvirt.xml.builder import CpuMode


@dataclass(frozen=True, slots=True)
class LibvirtConfig:
    """Settings shared by every connection a ``LibvirtHypervisor`` opens.

    keepalive: libvirt pings the server every ``keepalive_interval_s`` and declares the
    connection dead after ``keepalive_count`` unanswered pings (5 s x 3 -> about 20 s; lab-notes
    measured 1 s x 3 -> about 4 s). Local and test connections ignore it.
    cpu_mode: how kvm domains describe their CPU (see CpuMode; AUTO picks per host).
    machine: the machine type for new domains (None: libvirt's default for the arch).
    reconnect_*: after a failed reconnect, the next attempt waits min..max seconds, doubling.
    """

    keepalive_interval_s: int = 5
    keepalive_count: int = 3
    cpu_mode: CpuMode = CpuMode.AUTO
    machine: str | None = None
    reconnect_min_backoff_s: float = 0.5
    reconnect_max_backoff_s: float = 30.0
    shutdown_poll_s: float = 0.2
