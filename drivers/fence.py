"""Fencing: run the operator's fence command for a failed host (IPMI, PDU, cloud API...).

The command is an argv template, one list element per argument, with ``{host}`` and
``{address}`` placeholders substituted inside each element. It is never joined into a shell
string, so a host name can not inject anything: ``["fence_ipmilan", "-a", "{address}", "-o",
"off"]`` runs exactly that program with exactly those arguments.
"""

from __future__ import annotations

import string
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from vmmgr.errors import DeadlineExceeded, DriverError, InvalidArgument

PLACEHOLDERS = frozenset({"host", "address"})


@dataclass(frozen=True, slots=True)
class FenceCommand:
    argv: tuple[str, ...]
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        validate_template(self.argv)
        if not self.timeout_s > 0:
            raise InvalidArgument("fence.timeout_s", "must be positive")


def validate_template(argv: Sequence[str]) -> None:
    """Only ``{host}`` and ``{address}``; no format specs, conversions or positional fields."""
    if not argv or not argv[0]:
        raise InvalidArgument("fence.argv", "needs at least the program to run")
    for n, arg in enumerate(argv):
        try:
            parts = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise InvalidArgument(f"fence.argv[{n}]", f"bad placeholder syntax: {exc}") from None
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                raise InvalidArgument(
                    f"fence.argv[{n}]",
                    f"unknown placeholder {{{name}}}; allowed: {{host}}, {{address}}",
                )


def render(argv: Sequence[str], *, host: str, address: str) -> list[str]:
    validate_template(argv)
    return [arg.format(host=host, address=address) for arg in argv]


def fence_host(command: FenceCommand, *, host: str, address: str) -> str:
    """Run the fence command for one host; returns its stdout. Raises DriverError when it fails
    or cannot run, DeadlineExceeded when it outlives ``timeout_s`` (it is killed)."""
    argv = render(command.argv, host=host, address=address)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=command.timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise DeadlineExceeded(
            f"fencing {host}: {argv[0]} ran over {command.timeout_s:.0f}s and was killed"
        ) from None
    except OSError as exc:
        raise DriverError(f"fencing {host}: cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-400:]
        raise DriverError(
            f"fencing {host}: {argv[0]} exited {done.returncode}: {tail}",
            details={"host": host, "returncode": str(done.returncode)},
        )
    return done.stdout
