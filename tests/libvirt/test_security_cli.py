"""`vmmgr token|project|audit|certs` and the client config file, against an in-process
daemon that requires tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, running_daemon, test_config
from vmmgr.cli.main import main
from vmmgr.state import repo
from vmmgr.state.models import Role


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, str]]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    for var in ("VMMGR_TOKEN", "VMMGR_ENDPOINT", "VMMGR_CONFIG", "VMMGR_CA"):
        monkeypatch.delenv(var, raising=False)
    with running_daemon(test_config(tmp_path, auth="on")) as d:
        with d.core.store.session() as s:
            secret = repo.create_token(s, "root", "default", Role.ADMIN.value)[1]
        yield d, secret


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_admin_commands(daemon: tuple[Daemon, str], capsys: pytest.CaptureFixture[str]) -> None:
    d, secret = daemon
    base = ("--endpoint", d.address, "--token", secret)
    rc, out, err = run(capsys, *base, "project", "create", "team", "--vcpus", "4",
                       "--gpu", "H100-80GB=2")
    assert rc == 0 and "vcpus=4 gpu:H100-80GB=2" in out, err
    rc, out, _ = run(capsys, *base, "project", "set-quota", "team", "--memory-mib", "2048")
    assert rc == 0 and "vcpus=4 memory_mib=2048 gpu:H100-80GB=2" in out
    rc, out, _ = run(capsys, *base, "project", "set-quota", "team", "--gpu", "H100-80GB=-")
    assert rc == 0 and "gpu:" not in out
    rc, out, _ = run(capsys, *base, "-o", "json", "project", "list")
    assert [p["name"] for p in json.loads(out)] == ["default", "team"]  # default: at start

    rc, out, err = run(capsys, *base, "token", "create", "ci", "--project", "team",
                       "--role", "operator")
    assert rc == 0 and "shown once" in err
    kv = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert kv["role"] == "operator" and kv["secret"].startswith("vmm_")
    rc, out, _ = run(capsys, "--endpoint", d.address, "--token", kv["secret"], "vm", "list")
    assert rc == 0
    rc, out, _ = run(capsys, *base, "token", "list")
    assert "ci" in out and "vmm_" not in out
    rc, out, _ = run(capsys, *base, "token", "revoke", kv["id"])
    assert rc == 0
    rc, _, err = run(capsys, "--endpoint", d.address, "--token", kv["secret"], "vm", "list")
    assert rc == 1 and err.startswith("vmmgr: UNAUTHENTICATED: the bearer token is unknown")

    rc, out, _ = run(capsys, *base, "-o", "json", "audit", "list")
    rows = json.loads(out)
    assert [r["method"] for r in rows] == [
        "AdminService.CreateProject", "AdminService.UpdateProject",
        "AdminService.UpdateProject", "AdminService.CreateToken", "AdminService.RevokeToken"]
    assert all(r["principal"] == "root" and r["result_code"] == "OK" for r in rows)
    rc, out, _ = run(capsys, *base, "audit", "list", "--after", str(rows[-2]["seq"]))
    assert "RevokeToken" in out and "CreateToken" not in out


def test_missing_token_and_viewer_messages(daemon: tuple[Daemon, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    d, secret = daemon
    rc, _, err = run(capsys, "--endpoint", d.address, "host", "list")
    assert rc == 1 and "UNAUTHENTICATED" in err and "VMMGR_TOKEN" in err
    with d.core.store.session() as s:
        viewer = repo.create_token(s, "eyes", "default", Role.VIEWER.value)[1]
    rc, _, err = run(capsys, "--endpoint", d.address, "--token", viewer, "host", "remove", "x")
    assert rc == 1 and "PERMISSION_DENIED" in err and "needs role admin" in err


def test_config_file_and_env(daemon: tuple[Daemon, str], capsys: pytest.CaptureFixture[str],
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, secret = daemon
    cfg = tmp_path / "no-config" / "vmmgr" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'endpoint = "{d.address}"\ntoken = "{secret}"\n')
    assert run(capsys, "host", "list")[0] == 0  # everything from the default file
    monkeypatch.setenv("VMMGR_TOKEN", "vmm_wrong")  # env beats the file
    rc, _, err = run(capsys, "host", "list")
    assert rc == 1 and "UNAUTHENTICATED" in err
    assert run(capsys, "--token", secret, "host", "list")[0] == 0  # flags beat env
    cfg.write_text('bogus = 1\n')
    rc, _, err = run(capsys, "host", "list")
    assert rc == 2 and "unknown setting 'bogus'" in err


def test_certs_init_needs_no_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--endpoint", "127.0.0.1:1", "certs", "init", str(tmp_path / "pki"),
                     "--name", "vmmgr.lab", "--client-name", "alice")
    assert rc == 0 and 'tls_cert = "' in out
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == [
        "ca-key.pem", "ca.pem", "client-key.pem", "client.pem", "server-key.pem", "server.pem"]
    rc, _, err = run(capsys, "certs", "init", str(tmp_path / "pki"))
    assert rc == 1 and "exists" in err
    rc, out, _ = run(capsys, "certs", "client", "bob", "--dir", str(tmp_path / "pki"))
    assert rc == 0 and out.split() == [str(tmp_path / "pki" / "bob.pem"),
                                       str(tmp_path / "pki" / "bob-key.pem")]
