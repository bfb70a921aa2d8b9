"""NVIDIA GPU facts through NVML (module ``pynvml`` from the nvidia-ml-py package).

The module is injectable: tests pass a fake shaped from a real recording, and this code runs
over it unchanged. Every call that answers Not Supported (or a function the driver lacks)
degrades to None ("unknown"); GPU_IS_LOST marks the GPU lost and stops querying it; any other
NVML error is recorded in ``GpuFacts.errors`` and the field stays unknown.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from vmmgr.devices.model import (
    GpuFacts,
    MigFacts,
    MigInstanceFacts,
    MigProfileFacts,
    RemappedRows,
    VgpuTypeFacts,
    normalise_address,
)
from vmmgr.errors import DriverError, NotFound, Unavailable

log = logging.getLogger(__name__)

_VIRT_MODES = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host_vgpu", 4: "host_vsga"}
_HOST_VGPU_MODES = {0: "non_sriov", 1: "sriov"}
# GPU-instance profile index -> name suffix (nvml.h NVML_GPU_INSTANCE_PROFILE_*).
_PROFILE_SUFFIX = {0x7: "+me", 0xA: "+gfx", 0xB: "+gfx", 0xC: "+gfx", 0x11: "+gfx"}
_PROFILE_SUFFIX.update({0xD: "-me", 0xE: "-me", 0xF: "+me.all", 0x10: "+me.all"})
MAX_GPU_INSTANCES = 8


class NvmlUnavailable(Unavailable):
    """NVML cannot be used on this machine (no library, no driver, no GPU access)."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").rstrip("\x00")
    return str(value)


def profile_name(index: int, slices: int, memory_mib: int, reported: str = "") -> str:
    """ "1g.10gb" style name: NVML's own (v2 struct, "MIG " prefix dropped) or derived."""
    name = reported.strip()
    if name:
        return name[4:] if name.upper().startswith("MIG ") else name
    return f"{slices}g.{math.ceil(memory_mib / 1024)}gb{_PROFILE_SUFFIX.get(index, '')}"


class _Calls:
    """Runs NVML calls for one GPU, turning errors into unknowns as documented above."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.lost = False
        self.errors: list[str] = []

    def __call__(self, fn_name: str, *args: Any, quiet: bool = False) -> Any:
        if self.lost:
            return None
        fn: Callable[..., Any] | None = getattr(self.nvml, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == self.nvml.NVML_ERROR_GPU_IS_LOST:
                self.lost = True
            elif (
                code
                not in (
                    self.nvml.NVML_ERROR_NOT_SUPPORTED,
                    self.nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                )
                and not quiet
            ):
                self.errors.append(f"{fn_name}: {exc}")
            return None


class NvmlDriver:
    """One NVML session. Use as a context manager or call open()/close()."""

    def __init__(self, module: Any | None = None) -> None:
        self._nvml = module
        self._open = False

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:  # pragma: no cover - dependency is declared
                raise NvmlUnavailable("the nvidia-ml-py package is not installed") from exc
            self._nvml = pynvml
        return self._nvml

    def open(self) -> None:
        if self._open:
            return
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML did not initialise: {exc}") from exc
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError as exc:
                log.warning("nvmlShutdown failed: %s", exc)

    def __enter__(self) -> NvmlDriver:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def try_open(cls, module: Any | None = None) -> NvmlDriver | None:
        """An open driver, or None where NVML cannot work (no NVIDIA driver here)."""
        drv = cls(module)
        try:
            drv.open()
        except NvmlUnavailable as exc:
            log.info("%s", exc)
            return None
        return drv

    # ------------------------------------------------------------------ queries

    def driver_version(self) -> str | None:
        v = _Calls(self.nvml)("nvmlSystemGetDriverVersion")
        return None if v is None else _text(v)

    def _handles(self) -> Iterator[tuple[int, Any, _Calls]]:
        self.open()
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise DriverError(f"nvmlDeviceGetCount failed: {exc}") from exc
        for index in range(count):
            calls = _Calls(nvml)
            handle = calls("nvmlDeviceGetHandleByIndex", index)
            yield index, handle, calls

    def handle(self, address: str) -> Any:
        """The NVML handle of the GPU at a PCI address (NotFound if NVML has no such GPU)."""
        want = normalise_address(address)
        for _, handle, calls in self._handles():
            if handle is None:
                continue
            info = calls("nvmlDeviceGetPciInfo", handle)
            if info is not None and normalise_address(_text(info.busId)) == want:
                return handle
        raise NotFound(f"NVML knows no GPU at {want}")

    def gpu_facts(self) -> list[GpuFacts]:
        return [self._facts(i, h, c) for i, h, c in self._handles()]

    def facts_for(self, address: str) -> GpuFacts:
        want = normalise_address(address)
        for f in self.gpu_facts():
            if f.address == want:
                return f
        raise NotFound(f"NVML knows no GPU at {want}")

    def compute_processes(self, handle: Any) -> int | None:
        procs = _Calls(self.nvml)("nvmlDeviceGetComputeRunningProcesses", handle)
        return None if procs is None else len(procs)

    def active_vgpus(self, handle: Any) -> int | None:
        active = _Calls(self.nvml)("nvmlDeviceGetActiveVgpus", handle)
        return None if active is None else len(active)

    def _facts(self, index: int, handle: Any, q: _Calls) -> GpuFacts:
        nvml = self.nvml
        if handle is None:
            return GpuFacts(index=index, address="", lost=q.lost, errors=tuple(q.errors))
        pci = q("nvmlDeviceGetPciInfo", handle)
        address = normalise_address(_text(pci.busId)) if pci is not None else ""
        uuid = q("nvmlDeviceGetUUID", handle)
        name = q("nvmlDeviceGetName", handle)
        mem = q("nvmlDeviceGetMemoryInfo", handle)
        util = q("nvmlDeviceGetUtilizationRates", handle)
        temp = q("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
        power = q("nvmlDeviceGetPowerUsage", handle)
        limit = q("nvmlDeviceGetEnforcedPowerLimit", handle)
        ecc = q("nvmlDeviceGetEccMode", handle)
        ecc_unc = q(
            "nvmlDeviceGetTotalEccErrors",
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        pages = q("nvmlDeviceGetRetiredPagesPendingStatus", handle)
        rows = q("nvmlDeviceGetRemappedRows", handle)
        virt = q("nvmlDeviceGetVirtualizationMode", handle)
        host_vgpu = q("nvmlDeviceGetHostVgpuMode", handle)
        numa = q("nvmlDeviceGetNumaNodeId", handle)
        persistence = q("nvmlDeviceGetPersistenceMode", handle)
        procs = q("nvmlDeviceGetComputeRunningProcesses", handle)
        supported = self._vgpu_types(q, handle, "nvmlDeviceGetSupportedVgpus")
        creatable = self._vgpu_types(q, handle, "nvmlDeviceGetCreatableVgpus")
        mig = self.mig_facts(handle, q)
        return GpuFacts(
            index=index,
            address=address,
            uuid=None if uuid is None else _text(uuid),
            name=None if name is None else _text(name),
            lost=q.lost,
            pci_device_id=None if pci is None else int(pci.pciDeviceId),
            memory_total_mib=None if mem is None else int(mem.total) // (1 << 20),
            memory_used_mib=None if mem is None else int(mem.used) // (1 << 20),
            utilization_gpu_pct=None if util is None else int(util.gpu),
            utilization_memory_pct=None if util is None else int(util.memory),
            temperature_c=None if temp is None else int(temp),
            power_mw=None if power is None else int(power),
            power_limit_mw=None if limit is None else int(limit),
            ecc_enabled=None if ecc is None else bool(ecc[0]),
            ecc_pending=None if ecc is None else bool(ecc[1]),
            ecc_uncorrected_volatile=None if ecc_unc is None else int(ecc_unc),
            retired_pages_pending=None if pages is None else bool(pages),
            remapped_rows=None
            if rows is None
            else RemappedRows(int(rows[0]), int(rows[1]), bool(rows[2]), bool(rows[3])),
            virtualization_mode=None if virt is None else _VIRT_MODES.get(int(virt), str(virt)),
            host_vgpu_mode=None
            if host_vgpu is None
            else _HOST_VGPU_MODES.get(int(host_vgpu), str(host_vgpu)),
            vgpu_supported=supported,
            vgpu_creatable=creatable,
            numa_node=None if numa is None or int(numa) < 0 else int(numa),
            persistence_mode=None if persistence is None else bool(persistence),
            compute_processes=None if procs is None else len(procs),
            mig=mig,
            errors=tuple(q.errors),
        )

    def _vgpu_types(self, q: _Calls, handle: Any, fn_name: str) -> tuple[VgpuTypeFacts, ...] | None:
        ids = q(fn_name, handle)
        if ids is None:
            return None
        out = []
        for tid in ids:
            name = q("nvmlVgpuTypeGetName", tid)
            most = q("nvmlVgpuTypeGetMaxInstances", handle, tid)
            out.append(
                VgpuTypeFacts(int(tid), "" if name is None else _text(name), most and int(most))
            )
        return tuple(out)

    def mig_facts(self, handle: Any, q: _Calls | None = None) -> MigFacts | None:
        """Mode, GPU-instance profiles and existing instances; None when MIG is unsupported."""
        nvml = self.nvml
        q = q or _Calls(nvml)
        mode = q("nvmlDeviceGetMigMode", handle)
        profiles: list[MigProfileFacts] = []
        count = getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0x12)
        for index in range(count):
            # Profiles this GPU lacks answer an error: that is "absent", not a problem.
            info = q("nvmlDeviceGetGpuInstanceProfileInfo", handle, index, quiet=True)
            if info is None:
                if q.lost:
                    break
                continue
            memory = int(info.memorySizeMB)
            slices = int(info.sliceCount)
            reported = _text(getattr(info, "name", b""))
            profiles.append(
                MigProfileFacts(
                    index=index,
                    id=int(info.id),
                    name=profile_name(index, slices, memory, reported),
                    slices=slices,
                    memory_mib=memory,
                    max_instances=int(info.instanceCount),
                )
            )
        if mode is None and not profiles:
            return None
        enabled = None if mode is None else bool(mode[0])
        instances = self._instances(handle, profiles, q) if enabled else []
        return MigFacts(
            enabled=enabled,
            pending=None if mode is None else bool(mode[1]),
            profiles=tuple(profiles),
            instances=tuple(i for i, _ in instances),
        )

    def _instances(
        self, handle: Any, profiles: list[MigProfileFacts], q: _Calls
    ) -> list[tuple[MigInstanceFacts, Any]]:
        out: list[tuple[MigInstanceFacts, Any]] = []
        for p in profiles:
            for gi in self.gpu_instance_handles(handle, p.id, q):
                info = q("nvmlGpuInstanceGetInfo", gi)
                if info is None:
                    continue
                out.append(
                    (
                        MigInstanceFacts(
                            gpu_instance_id=int(info.id),
                            profile_id=int(info.profileId),
                            profile=p.name,
                            start=int(info.placement.start),
                            size=int(info.placement.size),
                        ),
                        gi,
                    )
                )
        return sorted(out, key=lambda x: (x[0].start, x[0].gpu_instance_id))

    def gpu_instance_handles(
        self, handle: Any, profile_id: int, q: _Calls | None = None
    ) -> list[Any]:
        nvml = self.nvml
        q = q or _Calls(nvml)
        count = ctypes.c_uint(0)
        refs = (nvml.c_nvmlGpuInstance_t * MAX_GPU_INSTANCES)()
        if q("nvmlDeviceGetGpuInstances", handle, profile_id, refs, ctypes.byref(count)) is None:
            return []
        return [refs[i] for i in range(count.value)]

    def instances_with_handles(self, handle: Any) -> list[tuple[MigInstanceFacts, Any]]:
        facts = self.mig_facts(handle)
        if facts is None or not facts.enabled:
            return []
        return self._instances(handle, list(facts.profiles), _Calls(self.nvml))


@contextmanager
def nvml_session(module: Any | None = None) -> Iterator[NvmlDriver | None]:
    """An open NvmlDriver for the block, or None where NVML cannot initialise."""
    drv = NvmlDriver.try_open(module)
    try:
        yield drv
    finally:
        if drv is not None:
            drv.close()
