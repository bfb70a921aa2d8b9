"""Programs an FPGA by running a profile's argv command after verifying the bitstream.

The bitstream's sha256 is checked first: a missing file or a mismatch raises
FailedPrecondition and nothing runs. The command runs without a shell, with a timeout; a
non-zero exit is a DriverError carrying the tail of its output.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Callable
from typing import Any

from vmmgr.devices.fpga import placeholder_values, render_argv, validate_profile
from vmmgr.devices.model import FpgaProfile, FpgaProgramResult, normalise_address
from vmmgr.errors import DeadlineExceeded, DriverError, FailedPrecondition

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4000


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FpgaProgrammer:
    def __init__(self, *, run: Callable[..., Any] = subprocess.run) -> None:
        self._run = run

    def verify(self, profile: FpgaProfile) -> str:
        try:
            digest = file_sha256(profile.bitstream)
        except OSError as exc:
            raise FailedPrecondition(
                f"bitstream {profile.bitstream} of profile {profile.name} unreadable: {exc}"
            ) from exc
        if digest != profile.sha256.lower():
            raise FailedPrecondition(
                f"bitstream {profile.bitstream} sha256 {digest} does not match profile "
                f"{profile.name} ({profile.sha256.lower()}); not programming"
            )
        return digest

    def program(self, device: str, profile: FpgaProfile) -> FpgaProgramResult:
        validate_profile(profile)
        address = normalise_address(device, field="device")
        argv = render_argv(profile.command, placeholder_values(address, profile.bitstream))
        digest = self.verify(profile)
        log.info("programming %s with %s: %s", address, profile.name, argv)
        try:
            proc = self._run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=profile.timeout_s,
                check=False,
            )
        except FileNotFoundError as exc:
            raise FailedPrecondition(f"program command not found: {argv[0]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(
                f"programming {address} took longer than {profile.timeout_s:g}s"
            ) from exc
        output = (proc.stdout or "")[-OUTPUT_TAIL:]
        if proc.returncode != 0:
            raise DriverError(
                f"programming {address} with {profile.name} failed (exit {proc.returncode}): "
                f"{output.strip()[-500:]}"
            )
        return FpgaProgramResult(address, profile.name, digest, tuple(argv), output)
