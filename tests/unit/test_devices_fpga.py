"""FPGA programming: argv templates, sha256 check first, a real small script as the tool."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from drivers.devices.fpga import FpgaProgrammer
from vmmgr.devices.fpga import placeholder_values, render_argv, validate_profile
from vmmgr.devices.model import FpgaProfile
from vmmgr.errors import DeadlineExceeded, DriverError, FailedPrecondition, InvalidArgument

TOOL = """#!/bin/sh
# stands in for fpgaconf / xbutil: records its argv, one argument per line
for a in "$@"; do printf '%s\\n' "$a"; done > "$RECORD"
echo "programmed $2"
exit "${EXIT_CODE:-0}"
"""


@pytest.fixture
def tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fpga-tool"
    path.write_text(TOOL)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("RECORD", str(tmp_path / "argv.txt"))
    return path


@pytest.fixture
def bitstream(tmp_path: Path) -> Path:
    p = tmp_path / "design with space;rm -rf.gbs"
    p.write_bytes(os.urandom(4096))
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_render_is_per_argument() -> None:
    values = placeholder_values("3b:00.0", "/lib/firmware/a b.xclbin")
    argv = render_argv(["xbutil", "program", "-d", "{device}", "-u", "{bitstream}"], values)
    assert argv == ["xbutil", "program", "-d", "0000:3b:00.0", "-u", "/lib/firmware/a b.xclbin"]
    assert render_argv(["fpgaconf", "-B", "{bus}", "--x={domain}:{slot}.{function}"], values) == [
        "fpgaconf",
        "-B",
        "0x3b",
        "--x=0x0000:0x00.0",
    ]
    with pytest.raises(InvalidArgument) as err:
        render_argv(["tool", "{device.__class__}"], values)
    assert err.value.field == "command[1]"
    with pytest.raises(InvalidArgument):
        render_argv([], values)


def test_profile_validation() -> None:
    good = FpgaProfile("p", "/b.gbs", "a" * 64, ("tool", "{bitstream}"))
    validate_profile(good)
    with pytest.raises(InvalidArgument, match="64 hex"):
        validate_profile(FpgaProfile("p", "/b.gbs", "abc", ("tool",)))
    with pytest.raises(InvalidArgument, match="absolute"):
        validate_profile(FpgaProfile("p", "b.gbs", "a" * 64, ("tool",)))
    with pytest.raises(InvalidArgument, match="unknown placeholder"):
        validate_profile(FpgaProfile("p", "/b.gbs", "a" * 64, ("tool", "{evil}")))


def test_programs_with_a_real_command(tool: Path, bitstream: Path, tmp_path: Path) -> None:
    profile = FpgaProfile(
        "u250-xdma", str(bitstream), sha(bitstream), (str(tool), "-B", "{bus}", "{bitstream}")
    )
    result = FpgaProgrammer().program("0000:af:00.0", profile)
    assert result.bitstream_sha256 == sha(bitstream)
    assert result.argv == (str(tool), "-B", "0xaf", str(bitstream))
    # the bitstream path with a space and a ';' arrived as one argument, untouched
    assert (tmp_path / "argv.txt").read_text().splitlines() == ["-B", "0xaf", str(bitstream)]
    assert "programmed 0xaf" in result.output


def test_sha_mismatch_runs_nothing(tool: Path, bitstream: Path, tmp_path: Path) -> None:
    profile = FpgaProfile("p", str(bitstream), "0" * 64, (str(tool), "{bitstream}"))
    with pytest.raises(FailedPrecondition, match="does not match"):
        FpgaProgrammer().program("0000:af:00.0", profile)
    assert not (tmp_path / "argv.txt").exists()
    missing = FpgaProfile("p", str(tmp_path / "gone.gbs"), "0" * 64, (str(tool),))
    with pytest.raises(FailedPrecondition, match="unreadable"):
        FpgaProgrammer().program("0000:af:00.0", missing)
    assert not (tmp_path / "argv.txt").exists()


def test_tool_failures(tool: Path, bitstream: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = FpgaProfile("p", str(bitstream), sha(bitstream), (str(tool), "-B", "{bus}"))
    monkeypatch.setenv("EXIT_CODE", "3")
    with pytest.raises(DriverError, match="exit 3"):
        FpgaProgrammer().program("0000:af:00.0", profile)
    absent = FpgaProfile("p", str(bitstream), sha(bitstream), ("/nonexistent/fpgaconf",))
    with pytest.raises(FailedPrecondition, match="not found"):
        FpgaProgrammer().program("0000:af:00.0", absent)
    slow = FpgaProfile("p", str(bitstream), sha(bitstream), ("sleep", "5"), timeout_s=0.2)
    with pytest.raises(DeadlineExceeded):
        FpgaProgrammer().program("0000:af:00.0", slow)
