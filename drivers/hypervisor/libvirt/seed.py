"""cloud-init NoCloud seed ISOs, built locally with genisoimage (or xorriso/mkisofs).

The ISO (volume label ``cidata``; files meta-data, user-data and, if given, network-config) is
written to a temporary directory; the caller copies it into a volume it made meanwhile
(``max_bytes`` bounds its size).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import subprocess
import tempfile
import threading

from vmmgr.errors import DriverError, FailedPrecondition

SEED_LABEL = "cidata"
_TIMEOUT_S = 60
_SECTOR = 2048
# Beyond the files' own sectors: system area, volume descriptors, path tables, directories,
# Joliet and Rock Ridge records and the tools' 300 KiB of padding (genisoimage: 366 KiB).
_ISO_OVERHEAD = 1 << 20


def _iso_command(output: str) -> list[str]:
    exe, *options = _iso_tool(os.environ.get("PATH", os.defpath))
    return [exe, *options, "-output", output, "-volid", SEED_LABEL]


@functools.lru_cache(maxsize=4)
def _iso_tool(path: str) -> tuple[str, ...]:
    """The ISO tool on ``path`` and its options, looked up once per PATH: every create starts
    one, and the PATH walk costs more than the spawn's bookkeeping. Not found is not cached;
    a tool removed since is noticed when it fails to start (and forgotten)."""
    for tool in ("genisoimage", "mkisofs"):
        exe = shutil.which(tool, path=path)
        if exe:
            return (exe, "-quiet", "-joliet", "-rock")
    xorriso = shutil.which("xorriso", path=path)
    if xorriso:
        return (xorriso, "-as", "mkisofs", "-quiet")
    raise FailedPrecondition("no ISO tool found (install genisoimage or xorriso)")


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """``proc.wait(timeout_s)`` without its polling. With a timeout, Popen.wait sleeps in
    doubling steps from 0.5 ms (before Python 3.15, CPython gh-83069), which added about a
    millisecond to a tool that runs for three; a pidfd is readable the moment the child exits."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the child is already reaped
        return proc.wait(timeout_s)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout_s * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
    finally:
        os.close(fd)
    return proc.wait()


@functools.cache
def scratch_root() -> str:
    """Where seeds are built: tmpfs when there is one. The files live for milliseconds, and on a
    disk file system creating and unlinking them costs more than building the ISO."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


class SeedIsoBuild:
    """An ISO tool building a NoCloud seed in the background (vmmgr.ports.PendingFile).

    Started as soon as a create request is accepted, it runs on another core while the daemon
    places and records the VM; ``wait`` collects it when the volume is due.
    """

    def __init__(
        self, meta_data: str, user_data: str, network_config: str = "", *, workdir: str = ""
    ) -> None:
        self._own_dir = not workdir
        self._dir = workdir or tempfile.mkdtemp(prefix="vmmgr-seed-", dir=scratch_root())
        files = {"meta-data": meta_data, "user-data": user_data}
        if network_config:
            files["network-config"] = network_config
        paths: list[str] = []
        self._written = paths  # what _remove_dir unlinks: cheaper than a tree walk
        self.max_bytes = _ISO_OVERHEAD
        try:
            for name, content in files.items():
                path = os.path.join(self._dir, name)
                data = content.encode()
                with open(path, "wb") as f:
                    f.write(data)
                paths.append(path)
                self.max_bytes += -(-len(data) // _SECTOR) * _SECTOR
            self.path = os.path.join(self._dir, "seed.iso")
            log = os.path.join(self._dir, "tool.log")  # a file, not a pipe: nothing to drain
            self._written = [*paths, log, self.path]
            self._log = log
            cmd = _iso_command(self.path) + paths
            self._tool = os.path.basename(cmd[0])
            try:
                with open(log, "wb") as err:
                    self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            except FileNotFoundError as e:  # removed since it was found
                _iso_tool.cache_clear()
                raise FailedPrecondition(f"{cmd[0]} is gone: {e}") from e
        except BaseException:
            self._remove_dir()
            raise
        self._error: DriverError | None = None
        self._done = False
        self._discarding = threading.Lock()
        self._discarded = False

    def wait(self) -> str:
        """The ISO's path once the tool finished; DriverError if it failed or timed out."""
        if not self._done:
            try:
                code = wait_exit(self._proc, _TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                self._error = DriverError(f"{self._tool} timed out after {_TIMEOUT_S}s")
            else:
                if code != 0:
                    with open(self._log, encoding="utf-8", errors="replace") as f:
                        err = f.read(4096).strip()
                    self._error = DriverError(f"{self._tool} failed ({code}): {err}")
            self._done = True
        if self._error is not None:
            raise self._error
        return self.path

    def discard(self) -> None:
        """Stop the tool if it still runs and remove what it wrote (the ISO's upload is a copy).
        Once, from whichever thread calls first."""
        with self._discarding:
            if self._discarded:
                return
            self._discarded = True
        if not self._done:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._done = True
        self._remove_dir()

    def _remove_dir(self) -> None:
        if not self._own_dir:
            return
        for path in self._written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        try:
            os.rmdir(self._dir)
        except OSError:  # something else appeared in it: remove it all
            shutil.rmtree(self._dir, ignore_errors=True)


def build_seed_iso(workdir: str, meta_data: str, user_data: str, network_config: str = "") -> str:
    """Write the NoCloud files into ``workdir`` and build ``workdir/seed.iso``; its path."""
    return SeedIsoBuild(meta_data, user_data, network_config, workdir=workdir).wait()


def iso_volume_label(path: str) -> str:
    """The ISO 9660 volume identifier (primary volume descriptor, sector 16, bytes 40-72)."""
    with open(path, "rb") as f:
        f.seek(16 * 2048)
        pvd = f.read(72)
    if pvd[1:6] != b"CD001":
        raise ValueError(f"{path} is not an ISO 9660 image")
    return pvd[40:72].decode("ascii", "replace").rstrip()
