"""Hypervisor drivers. The only one is libvirt: ``drivers.hypervisor.libvirt``."""
