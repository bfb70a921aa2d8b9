"""Several libvirt hosts on one machine (network namespaces + per-host libvirtd) for tests."""

from drivers.lab.lab import Lab, LabHost, cleanup

__all__ = ["Lab", "LabHost", "cleanup"]
