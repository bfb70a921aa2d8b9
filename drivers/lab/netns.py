"""Thin wrappers over iproute2 for the lab's namespaces, bridge and veth pairs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable

from vmmgr.errors import DriverError, FailedPrecondition


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise DriverError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def netns_supported() -> str | None:
    """None if this process can create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "not root"
    probe = f"vmlab-probe-{os.getpid()}"
    try:
        proc = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "iproute2 (ip) not installed"
    if proc.returncode != 0:
        return f"ip netns add failed: {proc.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def list_netns(prefix: str) -> list[str]:
    out = ip("-j", "netns", "list", check=False).stdout.strip()
    names = [e["name"] for e in json.loads(out)] if out else []
    return sorted(n for n in names if n.startswith(prefix))


def list_links(prefix: str) -> list[str]:
    out = ip("-j", "link", "show", check=False).stdout.strip()
    names = [e["ifname"] for e in json.loads(out)] if out else []
    return sorted(n for n in names if n.startswith(prefix))


def netns_pids(ns: str) -> list[int]:
    proc = ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.strip().isdigit()]


def routes_overlapping(prefix24: str) -> list[str]:
    """Root-namespace routes whose destination starts with the lab's /24 prefix ("10.213.0.")."""
    out = ip("-j", "route", "show", check=False).stdout.strip()
    routes = json.loads(out) if out else []
    return [r["dst"] for r in routes if str(r.get("dst", "")).startswith(prefix24)]


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until the pids are gone (zombies count as gone); return those still alive."""
    left = list(pids)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        left = [p for p in left if _alive(p)]
        if left:
            time.sleep(0.05)
    return left


def kill_netns(ns: str, timeout_s: float = 5.0) -> None:
    """SIGKILL every process in the namespace (qemus and daemons first, reapers last)."""
    for _ in range(5):
        pids = netns_pids(ns)
        if not pids:
            return
        kill_pids(pids)
        if not wait_gone(pids, timeout_s):
            return
    left = [p for p in netns_pids(ns) if _alive(p)]
    if left:
        raise FailedPrecondition(f"processes survive SIGKILL in netns {ns}: {left}")
