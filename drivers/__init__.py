"""Side effects of vmmgr: hypervisor (libvirt) and device drivers (sysfs, NVML, subprocess).

Implementations of the interfaces in ``vmmgr.ports``; only ``vmmgr/daemon.py`` wires them in.
"""
