"""Accelerator device layer, pure part: inventory model, catalog, health, claims, MIG planning.

Side effects (libvirt node devices, sysfs, NVML, subprocess) live in drivers/devices behind
``vmmgr.devices.ports``.
"""
