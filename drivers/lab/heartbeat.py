"""Read the tiny guest's heartbeat lines through a libvirt stream (works over remote URIs)."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import libvirt

from drivers.lab.guest import HEARTBEAT_CHANNEL

# images/tiny/init: "vmmgr-heartbeat <id> <counter>", once a second
_LINE = re.compile(rb"vmmgr-heartbeat (\S+) (\d+)")


class HeartbeatReader:
    """Collects heartbeat sequence numbers from one domain's channel or serial console.

    A background thread blocks in ``stream.recv``; the stream ends when the domain stops or
    migrates away. ``seqs`` holds every sequence number seen, in order.
    """

    def __init__(self, dom: libvirt.virDomain, source: str = "channel") -> None:
        if source not in ("channel", "console"):
            raise ValueError("source must be 'channel' or 'console'")
        self._dom = dom
        self._source = source
        self._stream: libvirt.virStream | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self.seqs: list[int] = []
        self.ids: set[str] = set()
        self.raw = b""
        self.error: str | None = None
        self.ended = False

    def start(self) -> HeartbeatReader:
        stream = self._dom.connect().newStream(0)
        if self._source == "channel":
            self._dom.openChannel(HEARTBEAT_CHANNEL, stream, libvirt.VIR_DOMAIN_CHANNEL_FORCE)
        else:
            self._dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._stream is not None
        buf = b""
        try:
            while True:
                data = self._stream.recv(4096)
                if not isinstance(data, bytes) or not data:
                    break
                buf += data
                lines = buf.split(b"\n")
                buf = lines.pop()
                with self._cond:
                    self.raw += data
                    for line in lines:
                        m = _LINE.search(line)
                        if m:
                            self.ids.add(m.group(1).decode(errors="replace"))
                            self.seqs.append(int(m.group(2)))
                    self._cond.notify_all()
        except libvirt.libvirtError as e:
            self.error = str(e)
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def last(self) -> int | None:
        with self._cond:
            return self.seqs[-1] if self.seqs else None

    def wait_for(self, min_seq: int = 1, timeout_s: float = 30.0) -> int:
        """Block until a heartbeat numbered >= min_seq arrives; return its number."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self.seqs and self.seqs[-1] >= min_seq:
                    return self.seqs[-1]
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    raise TimeoutError(
                        f"no heartbeat >= {min_seq} (seen {self.seqs[-3:]}, ended={self.ended}, "
                        f"error={self.error})"
                    )
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
