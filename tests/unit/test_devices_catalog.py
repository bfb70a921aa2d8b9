"""Classification (GPU / FPGA / other) and the model names users ask for."""

from __future__ import annotations

import pytest

from vmmgr.devices.catalog import classify, model_name, parse_model
from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import DeviceKind


@pytest.mark.parametrize(
    ("vendor", "product", "pci_class", "kind"),
    [
        (0x10DE, 0x2330, 0x030200, DeviceKind.GPU),  # H100: 3D controller
        (0x10DE, 0x2230, 0x030000, DeviceKind.GPU),  # RTX A6000: VGA
        (0x1002, 0x740F, 0x038000, DeviceKind.GPU),  # AMD MI210: display controller
        (0x8086, 0x56C0, 0x038000, DeviceKind.GPU),  # Intel Flex: display class
        (0x10DE, 0x1AEF, 0x040300, DeviceKind.OTHER),  # NVIDIA HDMI audio
        (0x1A03, 0x2000, 0x030000, DeviceKind.OTHER),  # ASPEED BMC VGA is no GPU to hand out
        (0x1234, 0x1111, 0x030000, DeviceKind.OTHER),  # QEMU std VGA
        (0x10EE, 0x500C, 0x120000, DeviceKind.FPGA),  # Xilinx Alveo U250
        (0x10EE, 0x9038, 0x058000, DeviceKind.FPGA),  # any Xilinx function
        (0x1172, 0x5052, 0x120000, DeviceKind.FPGA),  # Altera
        (0x8086, 0x09C4, 0x120000, DeviceKind.FPGA),  # Intel PAC Arria 10
        (0x8086, 0x0B31, 0x120000, DeviceKind.FPGA),  # PAC N3000 VF
        (0x8086, 0xBCC0, 0x120000, DeviceKind.FPGA),
        (0x8086, 0x1572, 0x020000, DeviceKind.OTHER),  # Intel NIC is not an FPGA
    ],
)
def test_classify(vendor: int, product: int, pci_class: int, kind: DeviceKind) -> None:
    assert classify(vendor, product, pci_class) is kind


def test_model_names_from_table_then_product_name_then_ids() -> None:
    assert model_name(0x10DE, 0x2330, "GH100 [H100 SXM5 80GB]") == "H100-80GB"
    assert model_name(0x10DE, 0x20B0) == "A100"
    assert model_name(0x10DE, 0x20B2) == "A100"
    assert model_name(0x10EE, 0x500C) == "ALVEO-U250"
    assert model_name(0x10EE, 0x5004) == "ALVEO-U200"
    assert model_name(0x10DE, 0x9999, "  Some New GPU ") == "Some New GPU"
    assert model_name(0x10DE, 0x9999, "") == "10de:9999"


def test_queries_match_case_insensitively_by_name_or_id() -> None:
    q = parse_model("h100-80gb")
    assert q.matches("H100-80GB", 0x10DE, 0x2330)
    assert not q.matches("A100", 0x10DE, 0x20B0)
    assert q.in_catalog
    by_id = parse_model("10DE:2330")
    assert by_id.matches("whatever", 0x10DE, 0x2330)
    assert not by_id.matches("H100-80GB", 0x10DE, 0x2331)
    assert parse_model("0x10de:0x20b2").matches("", 0x10DE, 0x20B2)
    assert not parse_model("Z9000").in_catalog


def test_empty_model_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_model("  ", field="gpus[0].model")
    assert err.value.field == "gpus[0].model"
