#!/usr/bin/env python3
"""Start one lab host's libvirt daemons; run as ``ip netns exec NS python3 hostboot.py ...``.

Standard library only (it runs by path, outside the venv's import machinery, in the namespace).

``ip netns exec`` gives the command a private mount namespace (``/`` made rslave), so the bind
mounts made here (per-host dirs over /etc/libvirt, /run/libvirt, ...) are seen only by this
process and its descendants; they last as long as one of them lives. The process then detaches
and becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER): PID 1 on these machines reaps
orphans only every ~1.5 s, which made virDomainDestroy take 1-2 s; here every qemu libvirtd
double-forks is reaped at once. virtlogd, virtlockd and ``libvirtd --listen`` run in the
foreground as its children; the reaper exits when all of them (and adopted orphans) are gone.

The parent returns once the daemons are spawned and their pids are written to --state (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def private_mounts() -> None:
    """A mount namespace of our own, slave to the parent one (mounts never leak out)."""
    if _libc().unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    subprocess.run(["mount", "--make-rslave", "/"], check=True)


def bind(src: str, dst: str) -> None:
    os.makedirs(src, exist_ok=True)
    os.makedirs(dst, exist_ok=True)
    subprocess.run(["mount", "--bind", src, dst], check=True)


def wait_for(path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


def spawn(cmd: list[str], log_fd: int) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.execvp(cmd[0], cmd)
        except OSError as e:
            os.write(2, f"hostboot: exec {cmd[0]}: {e}\n".encode())
        os._exit(127)
    return pid


def run_reaper(args: argparse.Namespace, ready_w: int) -> int:
    libc = _libc()
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    run = "/run/libvirt"
    daemons: dict[str, int] = {}
    daemons["virtlogd"] = spawn(["virtlogd", "-p", f"{run}/virtlogd.pid"], log_fd)
    daemons["virtlockd"] = spawn(["virtlockd", "-p", f"{run}/virtlockd.pid"], log_fd)
    wait_for(f"{run}/virtlogd-sock", 10)
    wait_for(f"{run}/virtlockd-sock", 10)
    daemons["libvirtd"] = spawn(
        ["libvirtd", "--listen", "-f", "/etc/libvirt/libvirtd.conf", "-p", f"{run}/libvirtd.pid"],
        log_fd,
    )
    tmp = args.state + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"reaper": os.getpid(), "daemons": daemons}, f)
    os.replace(tmp, args.state)
    os.write(ready_w, b"ok\n")
    os.close(ready_w)

    def forward(signum: int, _frame: object) -> None:
        for pid in daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="start one vmmgr lab host's libvirt daemons")
    ap.add_argument("--bind", action="append", default=[], help="SRC:DST (repeatable)")
    ap.add_argument("--state", required=True, help="JSON file receiving the daemons' pids")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    private_mounts()
    for spec in args.bind:
        src, dst = spec.split(":", 1)
        bind(src, dst)

    ready_r, ready_w = os.pipe()
    if os.fork() > 0:  # parent: wait until the daemons are spawned, then return
        os.close(ready_w)
        ok = os.read(ready_r, 16).startswith(b"ok")
        return 0 if ok else 1
    os.close(ready_r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.chdir("/")
    try:
        code = run_reaper(args, ready_w)
    except BaseException as e:  # report, never return into the parent's code path
        os.write(2, f"hostboot: {e!r}\n".encode())
        code = 1
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
