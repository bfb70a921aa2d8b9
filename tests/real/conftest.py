"""Real tier: this machine's libvirtd (qemu:///system) and qemu.

Every test here needs libvirtd answering (skip, or fail under CI: see tests/conftest.py).
``scratch_dir`` is a per-test directory that qemu (running as libvirt-qemu) can reach, unlike
pytest's tmp_path (under a 0700 directory).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRATCH_ROOT = Path("/var/lib/libvirt/images/vmmgr-tests")


@pytest.fixture(autouse=True)
def _needs_system_libvirt(system_libvirt: str) -> None:
    """Gate every real-tier test on qemu:///system answering."""


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    path = SCRATCH_ROOT / uuid.uuid4().hex[:12]
    path.mkdir(parents=True, mode=0o755)
    for p in (SCRATCH_ROOT, path):
        p.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
