"""Synthetic clusters and request streams for tests and benchmarks (pure, seeded).

Device shapes follow real hardware: the H100 MIG profile table is the one NVML reported on the
reference H100 (/work/shared/reference/nvml-h100-passthrough.txt); the vGPU host carries
time-sliced L40S-like types (one type per GPU, framebuffer split 1/2/4/6/12 ways).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from vmmgr.snapshot import (
    ClusterSnapshot,
    DeviceKind,
    DeviceSnap,
    GpuRequest,
    HostSnap,
    HostState,
    MdevTypeSnap,
    MigProfileSnap,
    MigSnap,
    NumaCell,
    PlacementRequest,
)

H100_MIG_PROFILES: tuple[MigProfileSnap, ...] = (
    MigProfileSnap("1g.10gb", 1, 9984, 7),
    MigProfileSnap("1g.20gb", 1, 20096, 4),
    MigProfileSnap("2g.20gb", 2, 20096, 3),
    MigProfileSnap("3g.40gb", 3, 40448, 2),
    MigProfileSnap("4g.40gb", 4, 40448, 1),
    MigProfileSnap("7g.80gb", 7, 81152, 1),
)

L40S_TYPES: tuple[tuple[str, str, int], ...] = (
    ("nvidia-1155", "NVIDIA L40S-4Q", 12),
    ("nvidia-1156", "NVIDIA L40S-8Q", 6),
    ("nvidia-1157", "NVIDIA L40S-12Q", 4),
    ("nvidia-1158", "NVIDIA L40S-24Q", 2),
    ("nvidia-1159", "NVIDIA L40S-48Q", 1),
)


def gpu(
    host: str,
    n: int,
    *,
    model: str = "H100-80GB",
    numa: int | None = 0,
    group: int | None = None,
    mig: bool = False,
    vgpu: bool = False,
    **kw: object,
) -> DeviceSnap:
    """One GPU on ``host`` at PCI slot ``n`` (IOMMU group ``n`` unless given)."""
    address = f"0000:{0x10 + n:02x}:00.0"
    fields: dict[str, object] = {
        "id": f"{host}/{address}",
        "host": host,
        "address": address,
        "kind": DeviceKind.GPU,
        "vendor_id": 0x10DE,
        "product_id": 0x2330 if model.startswith("H100") else 0x26B9,
        "model": model,
        "numa_node": numa,
        "iommu_group": n if group is None else group,
    }
    if mig:
        fields["mig"] = MigSnap(enabled=True, total_slices=7, profiles=H100_MIG_PROFILES)
    if vgpu:
        fields["mdev_types"] = tuple(MdevTypeSnap(t, d, m, m) for t, d, m in L40S_TYPES)
    fields.update(kw)
    return DeviceSnap(**fields)  # type: ignore[arg-type]


def fpga(host: str, n: int, *, model: str = "ALVEO-U250", numa: int | None = 0) -> DeviceSnap:
    address = f"0000:{0x80 + n:02x}:00.0"
    return DeviceSnap(
        id=f"{host}/{address}",
        host=host,
        address=address,
        kind=DeviceKind.FPGA,
        vendor_id=0x10EE,
        product_id=0x5004,
        model=model,
        numa_node=numa,
        iommu_group=100 + n,
    )


def host(
    name: str,
    *,
    cpus: int = 64,
    memory_mib: int = 256 * 1024,
    cells: int = 2,
    devices: Sequence[DeviceSnap] = (),
    **kw: object,
) -> HostSnap:
    numa = tuple(NumaCell(c, cpus // cells, memory_mib // cells) for c in range(cells))
    fields: dict[str, object] = {
        "name": name,
        "state": HostState.UP,
        "cpus": cpus,
        "memory_mib": memory_mib,
        "disk_gib": 2000,
        "numa_cells": numa,
        "devices": tuple(devices),
    }
    fields.update(kw)
    return HostSnap(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ClusterMix:
    """Share of host kinds (the rest are CPU-only)."""

    whole_gpu: float = 0.15  # 8 x H100, passthrough
    mig: float = 0.10  # 8 x H100, MIG enabled
    vgpu: float = 0.10  # 4 x L40S, vGPU
    fpga: float = 0.05  # 2 x Alveo
    fill: float = 0.3  # mean initial vCPU/memory use of CPU resources (0 = empty cluster)


def cluster(n_hosts: int, *, seed: int = 0, mix: ClusterMix | None = None) -> ClusterSnapshot:
    mix = mix or ClusterMix()
    rnd = random.Random(seed)
    hosts: list[HostSnap] = []
    for i in range(n_hosts):
        name = f"h{i:05d}"
        r = rnd.random()
        devs: list[DeviceSnap] = []
        pool = "cpu"
        if r < mix.whole_gpu:
            devs = [gpu(name, n, numa=n // 4) for n in range(8)]
            pool = "gpu"
        elif r < mix.whole_gpu + mix.mig:
            devs = [gpu(name, n, numa=n // 4, mig=True) for n in range(8)]
            pool = "gpu"
        elif r < mix.whole_gpu + mix.mig + mix.vgpu:
            devs = [gpu(name, n, model="L40S", numa=n // 2, vgpu=True) for n in range(4)]
            pool = "gpu"
        elif r < mix.whole_gpu + mix.mig + mix.vgpu + mix.fpga:
            devs = [fpga(name, n, numa=n) for n in range(2)]
            pool = "fpga"
        cpus = 128 if devs else rnd.choice((32, 64, 64, 96))
        mem = cpus * 4 * 1024
        used_cpu = int(cpus * 4 * mix.fill * rnd.uniform(0.5, 1.5) * 0.5)
        used_mem = int(mem * mix.fill * rnd.uniform(0.5, 1.5)) // 1024 * 1024
        hosts.append(
            host(
                name,
                cpus=cpus,
                memory_mib=mem,
                devices=devs,
                pool=pool,
                used_vcpus=min(used_cpu, cpus * 4),
                used_memory_mib=min(used_mem, mem),
                cpu_load=round(rnd.random(), 2),
                tags=frozenset({"ssd"} if rnd.random() < 0.5 else ()),
            )
        )
    return ClusterSnapshot(hosts=tuple(hosts))


def requests(n: int, *, seed: int = 0, prefix: str = "vm") -> list[PlacementRequest]:
    """Mixed stream: 55% CPU-only, 15% whole GPUs, 15% vGPU, 15% MIG."""
    rnd = random.Random(seed)
    out: list[PlacementRequest] = []
    for i in range(n):
        vm = f"{prefix}{i:06d}"
        r = rnd.random()
        vcpus = rnd.choice((1, 2, 2, 4, 4, 8, 16))
        mem = vcpus * rnd.choice((1024, 2048, 4096))
        if r < 0.55:
            out.append(PlacementRequest(vm, vcpus, mem, disk_gib=rnd.choice((0, 20, 50))))
        elif r < 0.70:
            count = rnd.choice((1, 1, 1, 2, 2, 4, 8))
            gpus = (GpuRequest("H100-80GB", count),)
            out.append(PlacementRequest(vm, 8 * count, 32768 * count, gpus=gpus))
        elif r < 0.85:
            t = rnd.choice(L40S_TYPES)
            out.append(PlacementRequest(vm, vcpus, mem, vgpu_type=t[0]))
        else:
            p = rnd.choice(("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"))
            out.append(PlacementRequest(vm, vcpus, mem, mig_profile=p))
    return out
