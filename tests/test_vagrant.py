"""The multi-host lab's Vagrantfile (vagrant/) is valid: `vagrant validate` with the
vagrant-libvirt provider, offline (no box download, no plugin install, no version check)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[1] / "vagrant"


def test_provision_scripts_parse() -> None:
    scripts = sorted((VAGRANT_DIR / "provision").glob("*.sh"))
    assert scripts, "vagrant/provision has no scripts"
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        VAGRANT_DEFAULT_PROVIDER="libvirt",
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),  # keep vagrant's state out of the repo
        VAGRANT_HOME=str(tmp_path / "home"),
    )
    plugins = subprocess.run(["vagrant", "plugin", "list"], env=env, capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "vagrant-libvirt" in plugins.stdout, plugins.stdout + plugins.stderr
    # with the provider plugin loaded, validate checks the libvirt settings too
    proc = subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    # the controller's qemu+ssh key pair was made where vagrant keeps its state
    assert (tmp_path / "dot" / "lab_ed25519.pub").is_file()
