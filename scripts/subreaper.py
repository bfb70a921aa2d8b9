#!/usr/bin/env python3
"""Run a command as a child of a subreaper that reaps every descendant at once.

PID 1 on the CI/dev machines reaps orphans only about every 1.5 s, so a daemon that
double-forks helpers (libvirtd -> qemu) sees zombies linger and virDomainDestroy takes
1-2 s. Under this wrapper (prctl PR_SET_CHILD_SUBREAPER) orphans are re-parented here and
reaped immediately.

    subreaper.py [--daemon] [--pidfile F] [--log F] -- COMMAND [ARGS...]

--daemon   detach (fork + setsid, stdin from /dev/null, stdout/stderr to --log or /dev/null)
           and return at once; the wrapper lives on as the subreaper. The working directory
           is kept (relative paths in COMMAND stay valid).
--pidfile  write the pid of COMMAND (not the wrapper) there; removed when COMMAND exits.

SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 received by the wrapper are forwarded to COMMAND.
The wrapper exits with COMMAND's status once COMMAND *and* all adopted orphans are gone
(a qemu that outlives libvirtd still needs a reaper).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def daemonize(log: str | None) -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--daemon", action="store_true")
    ap.add_argument("--pidfile")
    ap.add_argument("--log")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("missing COMMAND")
    pidfile = os.path.abspath(a.pidfile) if a.pidfile else None
    log = os.path.abspath(a.log) if a.log else None
    if log:
        os.makedirs(os.path.dirname(log), exist_ok=True)

    if a.daemon:
        daemonize(log)
    set_subreaper()

    child = os.fork()
    if child == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"subreaper: exec {cmd[0]}: {e}", file=sys.stderr)
            os._exit(127)

    if pidfile:
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{child}\n")
        os.replace(tmp, pidfile)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)

    status = 0
    child_alive = True
    while True:
        try:
            pid, st = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if pid == child and child_alive:
            child_alive = False
            status = os.waitstatus_to_exitcode(st)
            if status < 0:
                status = 128 - status
            if pidfile:
                with contextlib.suppress(OSError), open(pidfile) as f:
                    if f.read().strip() == str(child):
                        os.unlink(pidfile)
    return status


if __name__ == "__main__":
    sys.exit(main())
