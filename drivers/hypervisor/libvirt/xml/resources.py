"""Resource elements of a domain: memory, vCPUs, CPU model, NUMA memory policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from drivers.hypervisor.libvirt.xml.base import (
    Element,
    attr,
    child,
    expect_tag,
    make,
    sub,
    to_bytes,
)


@dataclass(frozen=True, slots=True)
class Memory:
    """``<memory unit='KiB'>``: the domain's maximum memory, always built in KiB."""

    TAG: ClassVar[str] = "memory"

    kib: int

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(kib=to_bytes(el.text or "0", el.get("unit"), "KiB") // 1024)

    def build(self) -> Element:
        return make(self.TAG, str(self.kib), unit="KiB")


@dataclass(frozen=True, slots=True)
class CurrentMemory:
    """``<currentMemory unit='KiB'>``: memory at boot (balloon target)."""

    TAG: ClassVar[str] = "currentMemory"

    kib: int

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(kib=to_bytes(el.text or "0", el.get("unit"), "KiB") // 1024)

    def build(self) -> Element:
        return make(self.TAG, str(self.kib), unit="KiB")


@dataclass(frozen=True, slots=True)
class Vcpu:
    """``<vcpu placement='static' cpuset='0-3'>N</vcpu>``; cpuset pins all vCPUs to host CPUs."""

    TAG: ClassVar[str] = "vcpu"

    count: int
    placement: str | None = "static"
    cpuset: str | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(
            count=int((el.text or "1").strip()),
            placement=el.get("placement"),
            cpuset=el.get("cpuset"),
        )

    def build(self) -> Element:
        return make(self.TAG, str(self.count), placement=self.placement, cpuset=self.cpuset)


@dataclass(frozen=True, slots=True)
class NumaTune:
    """``<numatune><memory mode='strict' nodeset='1'/></numatune>``: host NUMA memory policy."""

    TAG: ClassVar[str] = "numatune"

    nodeset: str
    mode: str = "strict"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        mem = child(el, "memory")
        return cls(nodeset=attr(mem, "nodeset") or "", mode=attr(mem, "mode") or "strict")

    def build(self) -> Element:
        el = make(self.TAG)
        sub(el, "memory", mode=self.mode, nodeset=self.nodeset)
        return el


@dataclass(frozen=True, slots=True)
class CpuModel:
    """``<model fallback='allow'>qemu64</model>``."""

    TAG: ClassVar[str] = "model"

    name: str
    fallback: str | None = None

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(name=el.text or "", fallback=el.get("fallback"))

    def build(self) -> Element:
        return make(self.TAG, self.name, fallback=self.fallback)


@dataclass(frozen=True, slots=True)
class CpuFeature:
    """``<feature policy='disable' name='svm'/>``."""

    TAG: ClassVar[str] = "feature"

    name: str
    policy: str = "require"

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        return cls(name=el.get("name", ""), policy=el.get("policy", "require"))

    def build(self) -> Element:
        return make(self.TAG, policy=self.policy, name=self.name)


@dataclass(frozen=True, slots=True)
class Cpu:
    """``<cpu mode=... match=...>`` with an optional model and feature policies."""

    TAG: ClassVar[str] = "cpu"

    mode: str  # custom | host-model | host-passthrough | maximum
    match: str | None = None  # only meaningful for mode='custom'
    check: str | None = None
    model: CpuModel | None = None
    features: tuple[CpuFeature, ...] = ()

    @classmethod
    def parse(cls, el: Element) -> Self:
        expect_tag(el, cls.TAG)
        model_el = child(el, CpuModel.TAG)
        return cls(
            mode=el.get("mode", "custom"),
            match=el.get("match"),
            check=el.get("check"),
            model=CpuModel.parse(model_el) if model_el is not None else None,
            features=tuple(CpuFeature.parse(f) for f in el.findall(CpuFeature.TAG)),
        )

    def build(self) -> Element:
        el = make(self.TAG, mode=self.mode, match=self.match, check=self.check)
        if self.model is not None:
            el.append(self.model.build())
        for feature in self.features:
            el.append(feature.build())
        return el
