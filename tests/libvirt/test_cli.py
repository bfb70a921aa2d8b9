"""The `vmmgr` CLI against an in-process daemon on the test driver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TEST_NODE_XML, Daemon, make_qcow2, running_daemon, test_config
from vmmgr.cli.main import build_parser, main


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE_XML)
    with running_daemon(test_config(tmp_path)) as d:
        yield d


def run(d: Daemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["--endpoint", d.address, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tour(daemon: Daemon, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    image = make_qcow2(tmp_path / "tiny.qcow2")
    assert run(daemon, capsys, "host", "register", "t1", f"test://{node}")[0] == 0
    rc, out, _ = run(daemon, capsys, "host", "list")
    assert rc == 0 and out.splitlines()[0].split()[:2] == ["NAME", "STATE"]
    assert "t1" in out and "up" in out
    assert run(daemon, capsys, "image", "import", "tiny", str(image))[0] == 0
    rc, out, _ = run(daemon, capsys, "vm", "create", "demo", "--image", "tiny", "--memory", "128")
    assert rc == 0 and "succeeded" in out
    rc, out, _ = run(daemon, capsys, "-o", "json", "vm", "list")
    vms = json.loads(out)
    assert [v["spec"]["name"] for v in vms] == ["demo"] and vms[0]["state"] == "VM_STATE_RUNNING"
    rc, out, _ = run(daemon, capsys, "vm", "stop", "demo", "--timeout", "1")
    assert rc == 0 and "stopped" in out
    assert run(daemon, capsys, "vm", "start", "demo")[0] == 0
    rc, out, err = run(daemon, capsys, "vm", "stop", "demo", "--force")
    assert rc == 0 and "stopped" in out and err == ""  # forced as asked: no "did not shut down"
    rc, out, _ = run(daemon, capsys, "vm", "explain", "x", "--image", "tiny", "--memory", "9999999")
    assert rc == 1 and "REJECTED" in out
    assert run(daemon, capsys, "vm", "delete", "demo")[0] == 0
    rc, out, _ = run(daemon, capsys, "events", "list")
    assert "vm.deleted" in out


def test_errors_are_readable_and_exit_non_zero(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(daemon, capsys, "vm", "get", "nope")
    assert rc == 1 and err.startswith("vmmgr: NOT_FOUND:")
    rc, _, err = run(daemon, capsys, "vm", "create", "Bad_Name", "--image", "x")
    assert rc == 1 and "INVALID_ARGUMENT" in err and "spec.name" in err
    rc, _, err = run(daemon, capsys, "vm", "create", "ok", "--image", "nope")
    assert rc == 1 and "NOT_FOUND" in err and "spec.disks[0].image" in err


def test_unreachable_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--endpoint", "127.0.0.1:1", "--timeout", "2", "host", "list"])
    assert rc == 1 and "cannot reach vmmgrd" in capsys.readouterr().err


def test_completion_covers_every_subcommand() -> None:
    script = build_parser()
    from vmmgr.cli.completion import bash_completion

    text = bash_completion(script)
    for word in ("host", "vm", "create", "maintenance", "--image", "telemetry", "policy"):
        assert word in text
