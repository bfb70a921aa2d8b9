"""cloud-init NoCloud seed ISOs, built locally with genisoimage (or xorriso/mkisofs).

The ISO (volume label ``cidata``; files meta-data, user-data and, if given, network-config) is
written to a temporary directory; the caller uploads it into a storage pool.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from vmmgr.errors import DriverError, FailedPrecondition

SEED_LABEL = "cidata"
_TIMEOUT_S = 60


def _iso_command(output: str) -> list[str]:
    for tool in ("genisoimage", "mkisofs"):
        exe = shutil.which(tool)
        if exe:
            return [exe, "-quiet", "-output", output, "-volid", SEED_LABEL, "-joliet", "-rock"]
    xorriso = shutil.which("xorriso")
    if xorriso:
        return [xorriso, "-as", "mkisofs", "-quiet", "-output", output, "-volid", SEED_LABEL]
    raise FailedPrecondition("no ISO tool found (install genisoimage or xorriso)")


def build_seed_iso(workdir: str, meta_data: str, user_data: str, network_config: str = "") -> str:
    """Write the NoCloud files into ``workdir`` and build ``workdir/seed.iso``; its path."""
    files = {"meta-data": meta_data, "user-data": user_data}
    if network_config:
        files["network-config"] = network_config
    paths = []
    for name, content in files.items():
        path = os.path.join(workdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        paths.append(path)
    output = os.path.join(workdir, "seed.iso")
    cmd = _iso_command(output) + paths
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{os.path.basename(cmd[0])} timed out after {_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        raise DriverError(
            f"{os.path.basename(cmd[0])} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return output


def iso_volume_label(path: str) -> str:
    """The ISO 9660 volume identifier (primary volume descriptor, sector 16, bytes 40-72)."""
    with open(path, "rb") as f:
        f.seek(16 * 2048)
        pvd = f.read(72)
    if pvd[1:6] != b"CD001":
        raise ValueError(f"{path} is not an ISO 9660 image")
    return pvd[40:72].decode("ascii", "replace").rstrip()
