"""Seed builds started by a helper thread (how vmmgrd starts them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.hypervisor.libvirt.seed import SeedIsoBuild, iso_volume_label
from vmmgr.errors import DriverError


def test_a_background_build_gives_the_same_iso() -> None:
    build = SeedIsoBuild('{"instance-id": "x"}', "#cloud-config\n{}", background=True)
    path = build.wait()
    assert iso_volume_label(path) == "cidata"
    assert build.wait() == path  # collected once, answered again
    build.discard()
    assert not Path(path).parent.exists()


def test_a_tool_that_cannot_start_fails_the_wait_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "genisoimage"
    tool.write_bytes(b"\x7fELF not really")  # executable bit, no loadable program: exec fails
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    build = SeedIsoBuild("a", "b", background=True)
    workdir = Path(build.path).parent
    with pytest.raises(DriverError, match="genisoimage could not be started"):
        build.wait()
    with pytest.raises(DriverError):  # the same answer again, no second attempt
        build.wait()
    build.discard()
    assert not workdir.exists()


def test_discarding_a_background_build_that_never_started_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "genisoimage"
    tool.write_bytes(b"\x7fELF not really")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    build = SeedIsoBuild("a", "b", background=True)
    workdir = Path(build.path).parent
    build.discard()
    build.discard()
    assert not workdir.exists()
