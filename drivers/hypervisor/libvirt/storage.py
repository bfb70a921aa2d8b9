"""Storage pool and volume operations on one libvirt connection.

Volumes are filled through libvirt upload streams (virStorageVolUpload), so importing an image
works on remote hosts too. Each multi-step operation undoes its own partial work on failure.
Volume operations take the pool handle: ``LibvirtConnection`` caches those per connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import libvirt

from drivers.hypervisor.libvirt.errors import error_code
from drivers.hypervisor.libvirt.images import detect_image_format, virtual_size
from drivers.hypervisor.libvirt.xml.base import to_string
from drivers.hypervisor.libvirt.xml.storage import BackingStore, StoragePool, StorageVolume
from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from vmmgr.ports import VolumeInfo

_CHUNK = 1 << 20


def _check_name(name: str, field: str = "name") -> None:
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(field, f"not a valid volume/pool name: {name!r}")


def lookup_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise NotFound(f"storage pool {name!r} not found") from e
        raise


def lookup_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def volume_info(pool_name: str, vol: libvirt.virStorageVol) -> VolumeInfo:
    parsed = StorageVolume.parse_xml(vol.XMLDesc(0))
    return VolumeInfo(
        pool=pool_name,
        name=parsed.name,
        path=parsed.path or vol.path(),
        format=parsed.format,
        capacity_bytes=parsed.capacity_bytes,
        allocation_bytes=parsed.allocation_bytes or 0,
    )


def ensure_pool(conn: libvirt.virConnect, name: str, path: str) -> None:
    """A started, autostarted dir pool ``name`` at ``path``; defined+built+started if missing."""
    _check_name(name)
    if not os.path.isabs(path):
        raise InvalidArgument("path", "must be an absolute path")
    target = os.path.normpath(path)
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as e:
        if error_code(e) != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        pool = None
    if pool is not None:
        existing = StoragePool.parse_xml(pool.XMLDesc(0))
        if os.path.normpath(existing.target_path) != target:
            raise FailedPrecondition(
                f"storage pool {name!r} exists at {existing.target_path}, not {target}"
            )
        if not pool.isActive():
            pool.create(0)
        if not pool.autostart():
            pool.setAutostart(1)
        return
    pool = conn.storagePoolDefineXML(to_string(StoragePool(name=name, target_path=target).build()))
    try:
        pool.build(0)
        pool.create(0)
        pool.setAutostart(1)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            if pool.isActive():
                pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()
        raise


def _refresh(pool: libvirt.virStoragePool) -> None:
    """Re-read the pool so libvirt re-probes uploaded files (format, virtual size).

    A refresh can collide with libvirt's own post-upload refresh; that one does the same job.
    """
    with contextlib.suppress(libvirt.libvirtError):
        pool.refresh(0)


def _upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: str, size: int) -> None:
    """The file's ``size`` bytes into the start of ``vol``. libvirt's test driver has no data
    plane (no virStorageVolUpload): there the volume stands in for the copy. Every other driver
    must really copy the bytes."""
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, size, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT and conn.getType() == "TEST":
            return
        raise
    try:
        with open(path, "rb") as f:
            stream.sendAll(lambda _s, n, _o: f.read(min(n, _CHUNK)), None)
        stream.finish()
    except OSError as e:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise DriverError(f"reading {path} for upload failed: {e}") from e
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise


def _create_volume(
    pool: libvirt.virStoragePool, pool_name: str, name: str, spec: StorageVolume
) -> libvirt.virStorageVol:
    """``pool.createXML`` with a taken name as AlreadyExists. No lookup beforehand: libvirt
    refuses a taken name itself. The storage driver says VIR_ERR_STORAGE_VOL_EXIST; the test
    driver says only VIR_ERR_OPERATION_FAILED, so there a lookup confirms it."""
    try:
        return pool.createXML(to_string(spec.build()), 0)
    except libvirt.libvirtError as e:
        code = error_code(e)
        if code == libvirt.VIR_ERR_STORAGE_VOL_EXIST or (
            code == libvirt.VIR_ERR_OPERATION_FAILED and lookup_volume(pool, name) is not None
        ):
            raise AlreadyExists(f"volume {name!r} already exists in pool {pool_name!r}") from e
        raise


def _as_created(
    pool_name: str, vol: libvirt.virStorageVol, spec: StorageVolume, allocation_bytes: int = 0
) -> VolumeInfo:
    """A volume just made from ``spec``, described from the request rather than read back (a
    backend may round the capacity up; ``get_volume`` reads libvirt's exact figures)."""
    return VolumeInfo(
        pool=pool_name,
        name=spec.name,
        path=vol.path(),
        format=spec.format,
        capacity_bytes=spec.capacity_bytes,
        allocation_bytes=allocation_bytes,
    )


def _detect_format(path: str) -> str:
    try:
        return detect_image_format(path)
    except OSError as e:
        raise DriverError(f"reading {path} for upload failed: {e}") from e


def upload_volume(
    conn: libvirt.virConnect,
    pool: libvirt.virStoragePool,
    pool_name: str,
    name: str,
    source_path: str,
) -> VolumeInfo:
    """Create volume ``name`` as an exact byte copy of the local file ``source_path``.

    The volume is created raw with the file's size and overwritten by the upload. A raw file
    is then described as created (libvirt has nothing to re-probe); for a qcow2 a pool refresh
    lets libvirt see it for what it is. Deleted again on a failed upload.
    """
    _check_name(name)
    if not os.path.isfile(source_path):
        raise InvalidArgument("source_path", f"no such file: {source_path}")
    detected = _detect_format(source_path)
    size = os.path.getsize(source_path)
    spec = StorageVolume(name=name, capacity_bytes=size, allocation_bytes=0, format="raw")
    vol = _create_volume(pool, pool_name, name, spec)
    try:
        _upload(conn, vol, source_path, size)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise
    if detected == "raw":  # what was created is what it is: raw, `size` bytes, all written
        return _as_created(pool_name, vol, spec, allocation_bytes=size)
    _refresh(pool)
    vol = pool.storageVolLookupByName(name)
    info = volume_info(pool_name, vol)
    if info.format != detected:  # libvirt did not (yet) re-probe: report what the bytes are
        info = dataclasses.replace(
            info, format=detected, capacity_bytes=virtual_size(source_path)
        )
    return info


def create_raw_volume(
    pool: libvirt.virStoragePool, pool_name: str, name: str, capacity_bytes: int
) -> VolumeInfo:
    """An empty raw volume (sparse where the pool allows), for ``write_volume`` to fill."""
    _check_name(name)
    if capacity_bytes <= 0:
        raise InvalidArgument("capacity_bytes", "must be positive")
    spec = StorageVolume(
        name=name, capacity_bytes=capacity_bytes, allocation_bytes=0, format="raw"
    )
    return _as_created(pool_name, _create_volume(pool, pool_name, name, spec), spec)


def write_volume(
    conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str, source_path: str
) -> None:
    """The bytes of the local file ``source_path`` into the start of volume ``name``, which
    must be at least as large (the rest of it is left as it is)."""
    vol = lookup_volume(pool, name)
    if vol is None:
        raise NotFound(f"volume {name!r} not found in pool {pool.name()!r}")
    try:
        size = os.path.getsize(source_path)
    except OSError as e:
        raise DriverError(f"reading {source_path} for upload failed: {e}") from e
    capacity = vol.info()[1]
    if size > capacity:
        raise DriverError(
            f"{source_path} ({size} bytes) does not fit volume {name!r} ({capacity} bytes)"
        )
    _upload(conn, vol, source_path, size)


def create_overlay(
    pool: libvirt.virStoragePool,
    pool_name: str,
    name: str,
    backing: VolumeInfo,
    capacity_bytes: int,
) -> VolumeInfo:
    """A qcow2 volume backed by ``backing`` (copy-on-write), at least as large as it."""
    _check_name(name)
    if capacity_bytes < 0:
        raise InvalidArgument("capacity_bytes", "must not be negative")
    capacity = max(capacity_bytes, backing.capacity_bytes)
    spec = StorageVolume(
        name=name,
        capacity_bytes=capacity,
        format="qcow2",
        backing_store=BackingStore(path=backing.path, format=backing.format),
    )
    return _as_created(pool_name, _create_volume(pool, pool_name, name, spec), spec)


def delete_volume(pool: libvirt.virStoragePool, name: str) -> None:
    """Delete a volume; a volume that is already gone is fine (undo paths call this)."""
    vol = lookup_volume(pool, name)
    if vol is None:
        return
    try:
        vol.delete(0)
    except libvirt.libvirtError as e:
        if error_code(e) != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise


def list_volumes(pool: libvirt.virStoragePool, pool_name: str) -> list[VolumeInfo]:
    out = []
    for vol in pool.listAllVolumes(0):
        try:
            out.append(volume_info(pool_name, vol))
        except libvirt.libvirtError as e:  # deleted between list and read
            if error_code(e) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
    return sorted(out, key=lambda v: v.name)


def get_volume(pool: libvirt.virStoragePool, pool_name: str, name: str) -> VolumeInfo | None:
    vol = lookup_volume(pool, name)
    if vol is None:  # another host may have written it into a shared directory: look again
        _refresh(pool)
        vol = lookup_volume(pool, name)
    return volume_info(pool_name, vol) if vol is not None else None
