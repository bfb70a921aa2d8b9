"""FPGA programming commands: argv templates with per-argument placeholders (pure).

A profile's command is a list of arguments such as ``["fpgaconf", "-B", "{bus}",
"{bitstream}"]`` or ``["xbutil", "program", "-d", "{device}", "-u", "{bitstream}"]``. Each
argument is substituted on its own (no shell ever parses the result), and only the known
placeholders are allowed: anything else in braces is refused as a bad profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vmmgr.devices.model import FpgaProfile, PciAddress
from vmmgr.errors import InvalidArgument

PLACEHOLDERS = frozenset({"device", "bus", "domain", "slot", "function", "bitstream"})
_TOKEN = re.compile(r"\{([^{}]*)\}")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def placeholder_values(address: str, bitstream: str) -> dict[str, str]:
    a = PciAddress.parse(address, field="device")
    return {
        "device": str(a),
        "bus": f"0x{a.bus:02x}",
        "domain": f"0x{a.domain:04x}",
        "slot": f"0x{a.slot:02x}",
        "function": str(a.function),
        "bitstream": bitstream,
    }


def render_argv(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Substitute ``{name}`` in each argument; unknown names raise InvalidArgument."""
    if not template:
        raise InvalidArgument("command", "the program command is empty")
    out: list[str] = []
    for i, arg in enumerate(template):

        def sub(m: re.Match[str], i: int = i) -> str:
            name = m[1]
            if name not in PLACEHOLDERS or name not in values:
                raise InvalidArgument(f"command[{i}]", f"unknown placeholder {{{name}}}")
            return values[name]

        out.append(_TOKEN.sub(sub, arg))
    return out


def validate_profile(profile: FpgaProfile) -> None:
    if not _SHA256.match(profile.sha256.lower()):
        raise InvalidArgument("sha256", "must be 64 hex digits")
    if not profile.bitstream.startswith("/"):
        raise InvalidArgument("bitstream", "must be an absolute path on the host")
    render_argv(profile.command, placeholder_values("0000:00:00.0", profile.bitstream))
