"""A worker thread that runs event and close callbacks off libvirt's event loop thread.

libvirt calls our callbacks on its single event loop thread; anything slow there (a listener,
or a libvirt call to read the domain's metadata) would delay keepalive for every connection.
The callbacks only enqueue; this worker does the rest, in order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()  # None = stop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Run what is queued, then end the worker (not waited for from the worker itself)."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything submitted so far has run; False on timeout."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("libvirt callback failed")
