"""Session fixtures for the environment the tiers need, and tier markers by directory.

Each environment fixture skips with a reason when its resource is missing, except under CI
(env CI set and not "0"/"false"), where a missing resource is a failure: CI installs
everything (`make test`), so absence there is a bug, not a reason to skip.

    tiny_image      Path of the tiny bootable guest (env VMMGR_TINY_IMAGE, default
                    images/build/tiny.qcow2; `make image`)
    pg_url          SQLAlchemy URL of the test PostgreSQL (env VMMGR_TEST_PG_URL;
                    `scripts/pg-test-up.sh`)
    system_libvirt  "qemu:///system" once it answers (`scripts/libvirtd-up.sh`)

Tests under tests/<tier>/ get the marker <tier> (libvirt, real, lab, postgres, gpu).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("libvirt", "real", "lab", "postgres", "gpu")
SYSTEM_URI = "qemu:///system"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, where every resource must be present."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(tests_dir).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    path = Path(os.environ.get("VMMGR_TINY_IMAGE") or ROOT / "images/build/tiny.qcow2")
    if not path.is_absolute():
        path = ROOT / path
    if not path.is_file():
        unavailable(f"tiny guest image {path} is missing (make image)")
    return path


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("VMMGR_TEST_PG_URL", "").strip()
    if not url:
        unavailable("VMMGR_TEST_PG_URL is not set (export it from scripts/pg-test-up.sh)")
    return url


@pytest.fixture(scope="session")
def system_libvirt() -> str:
    try:
        import libvirt
    except ImportError as e:
        unavailable(f"libvirt-python is not installed: {e}")
    try:
        conn = libvirt.open(SYSTEM_URI)
        try:
            conn.getLibVersion()
        finally:
            conn.close()
    except libvirt.libvirtError as e:
        unavailable(f"libvirtd does not answer at {SYSTEM_URI} (scripts/libvirtd-up.sh): {e}")
    return SYSTEM_URI
