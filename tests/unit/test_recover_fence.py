"""drivers/fence.py: argv templates run for real (no shell), failures surface as errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from drivers.fence import FenceCommand, fence_host, render
from vmmgr.errors import DeadlineExceeded, DriverError, InvalidArgument

PY = sys.executable


def test_placeholders_are_substituted_per_argument_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "argv.txt"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('\\n'.join(sys.argv[2:]))"
    host = "evil; rm -rf / $(id)"
    cmd = FenceCommand((PY, "-c", script, str(out), "--host={host}", "{address}", "lit{{x}}"))
    fence_host(cmd, host=host, address="10.0.0.7")
    assert out.read_text().split("\n") == [f"--host={host}", "10.0.0.7", "lit{x}"]


def test_render_keeps_one_element_per_argument() -> None:
    assert render(["ipmi", "-H", "{address}", "off {host}"], host="n 1", address="a") == [
        "ipmi",
        "-H",
        "a",
        "off n 1",
    ]


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        ((), "fence.argv"),
        (("x", "{hostname}"), "fence.argv[1]"),
        (("x", "{host!r}"), "fence.argv[1]"),
        (("{0}",), "fence.argv[0]"),
        (("x", "{host:>9}"), "fence.argv[1]"),
        (("x", "{host"), "fence.argv[1]"),
    ],
)
def test_bad_templates_are_rejected_naming_the_argument(argv: tuple[str, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        FenceCommand(argv)
    assert exc.value.field == field


def test_non_zero_exit_is_a_driver_error_with_stderr() -> None:
    cmd = FenceCommand((PY, "-c", "import sys; sys.stderr.write('bmc said no'); sys.exit(3)"))
    with pytest.raises(DriverError, match="exited 3: bmc said no") as exc:
        fence_host(cmd, host="h1", address="a")
    assert exc.value.details["returncode"] == "3"


def test_missing_program_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="cannot run /nonexistent/fence"):
        fence_host(FenceCommand(("/nonexistent/fence",)), host="h", address="a")


def test_hung_fence_command_is_killed_at_the_timeout() -> None:
    cmd = FenceCommand((PY, "-c", "import time; time.sleep(30)"), timeout_s=0.5)
    with pytest.raises(DeadlineExceeded, match="ran over"):
        fence_host(cmd, host="h", address="a")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="positive"):
        FenceCommand(("x",), timeout_s=0)
