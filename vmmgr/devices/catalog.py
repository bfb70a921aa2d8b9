"""Device classification and the model names users ask for.

Users name a model case-insensitively ("h100-80gb", "A100", "alveo-u250") or by its
"vendor:product" id ("10de:2330"). Ids not in the table keep the libvirt product name, or
"vvvv:pppp" when libvirt has none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import DeviceKind

NVIDIA = 0x10DE
AMD = 0x1002
INTEL = 0x8086
XILINX = 0x10EE
ALTERA = 0x1172

GPU_VENDORS = frozenset({NVIDIA, AMD, INTEL})
FPGA_VENDORS = frozenset({XILINX, ALTERA})

# Intel FPGA programmable acceleration cards (PF and VF ids); other Intel ids are not FPGAs.
INTEL_FPGA_IDS = frozenset(
    {0x09C4, 0x09C5, 0x0B2B, 0x0B2C, 0x0B30, 0x0B31, 0xBCC0, 0xBCC1, 0xBCCE, 0xBCCF}
)

# (vendor, product) -> model name. Sourced from the PCI ids of the listed products; the few
# Intel OFS names are approximate (one model name per PF/VF id).
MODELS: dict[tuple[int, int], str] = {
    (NVIDIA, 0x2330): "H100-80GB",  # H100 SXM5 80GB HBM3 (the recorded GPU)
    (NVIDIA, 0x2331): "H100-PCIE",
    (NVIDIA, 0x2321): "H100-NVL",
    (NVIDIA, 0x2335): "H200",
    (NVIDIA, 0x20B0): "A100",  # SXM4 40GB
    (NVIDIA, 0x20B2): "A100",  # SXM4 80GB
    (NVIDIA, 0x20B5): "A100",  # PCIe 80GB
    (NVIDIA, 0x20F1): "A100",  # PCIe 40GB
    (NVIDIA, 0x20B7): "A30",
    (NVIDIA, 0x26B5): "L40",
    (NVIDIA, 0x26B9): "L40S",
    (NVIDIA, 0x27B8): "L4",
    (NVIDIA, 0x1EB8): "T4",
    (NVIDIA, 0x1DB4): "V100",
    (NVIDIA, 0x1DB1): "V100",
    (NVIDIA, 0x2230): "RTX-A6000",
    (NVIDIA, 0x13F2): "M60",
    (AMD, 0x740F): "MI210",
    (AMD, 0x740C): "MI250X",
    (AMD, 0x74A1): "MI300X",
    (XILINX, 0x500C): "ALVEO-U250",
    (XILINX, 0x5004): "ALVEO-U200",
    (INTEL, 0x09C4): "PAC-A10",
    (INTEL, 0x09C5): "PAC-A10-VF",
    (INTEL, 0x0B2B): "PAC-D5005",
    (INTEL, 0x0B2C): "PAC-D5005-VF",
    (INTEL, 0x0B30): "PAC-N3000",
    (INTEL, 0x0B31): "PAC-N3000-VF",
    (INTEL, 0xBCC0): "OFS-FPGA",
    (INTEL, 0xBCC1): "OFS-FPGA-VF",
    (INTEL, 0xBCCE): "N6000",
    (INTEL, 0xBCCF): "N6000-VF",
}

KNOWN_MODEL_NAMES = frozenset(n.upper() for n in MODELS.values())

_ID = re.compile(r"^(?:0x)?([0-9a-fA-F]{4}):(?:0x)?([0-9a-fA-F]{4})$")


def classify(vendor_id: int, product_id: int, pci_class: int) -> DeviceKind:
    """GPU: NVIDIA/AMD/Intel display or 3D controller (class 0x03xxxx); FPGA: Xilinx, Altera,
    Intel PAC/OFS ids. A BMC's VGA (ASPEED, Matrox) is not a GPU anyone wants to pass through."""
    if vendor_id in FPGA_VENDORS or (vendor_id == INTEL and product_id in INTEL_FPGA_IDS):
        return DeviceKind.FPGA
    if vendor_id in GPU_VENDORS and pci_class >> 16 == 0x03:
        return DeviceKind.GPU
    return DeviceKind.OTHER


def model_name(vendor_id: int, product_id: int, product_name: str = "") -> str:
    known = MODELS.get((vendor_id, product_id))
    if known:
        return known
    if product_name.strip():
        return product_name.strip()
    return f"{vendor_id:04x}:{product_id:04x}"


@dataclass(frozen=True, slots=True)
class ModelQuery:
    """A parsed model request: a name (upper-cased) or a vendor:product pair."""

    text: str
    name: str | None = None
    vendor_id: int | None = None
    product_id: int | None = None

    def matches(self, model: str, vendor_id: int, product_id: int) -> bool:
        if self.vendor_id is not None:
            return (vendor_id, product_id) == (self.vendor_id, self.product_id)
        return model.upper() == self.name

    @property
    def in_catalog(self) -> bool:
        if self.vendor_id is not None:
            return True  # any id is well-formed; presence is the host's business
        return self.name in KNOWN_MODEL_NAMES


def parse_model(text: str, *, field: str = "model") -> ModelQuery:
    t = text.strip()
    if not t:
        raise InvalidArgument(field, "model must not be empty")
    m = _ID.match(t)
    if m:
        return ModelQuery(t, vendor_id=int(m[1], 16), product_id=int(m[2], 16))
    return ModelQuery(t, name=t.upper())


def known_models(present: Iterable[str] = ()) -> list[str]:
    """Sorted model names: the catalog plus what hosts report (for error messages)."""
    return sorted(set(MODELS.values()) | set(present))
