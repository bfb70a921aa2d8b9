"""The process-wide libvirt event loop.

libvirt delivers domain events, keepalive pings and connection-close callbacks only while an
event loop implementation is registered and run. ``start_event_loop()`` registers libvirt's
default implementation and runs it on one daemon thread; it must run before the first
connection is opened (``LibvirtHypervisor.connect`` calls it) and is idempotent.
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _quiet_error_handler(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; errors reach us as exceptions."""


def _run() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # keep the loop alive; a dead loop silently stops keepalive
            log.exception("libvirt event loop iteration failed")


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it on a daemon thread, once."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.registerErrorHandler(_quiet_error_handler, None)
        libvirt.virEventRegisterDefaultImpl()
        _thread = threading.Thread(target=_run, name="libvirt-event-loop", daemon=True)
        _thread.start()


def event_loop_running() -> bool:
    with _lock:
        return _thread is not None and _thread.is_alive()


def event_loop_barrier(timeout_s: float = 5.0) -> bool:
    """Wait until the event loop has run one more round of due timers.

    Locally queued libvirt events (the test driver's, or ones already read off a remote
    socket) are dispatched from a zero-delay timer registered when their connection opened;
    timers run in registration order, so once this later timer fired those events have reached
    our callbacks. False if the loop did not get there within ``timeout_s``.
    """
    if not event_loop_running():
        return False
    done = threading.Event()

    def fire(timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)
        done.set()

    libvirt.virEventAddTimeout(0, fire, None)
    return done.wait(timeout_s)
