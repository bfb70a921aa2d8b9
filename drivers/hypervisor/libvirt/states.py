"""Flattening libvirt's domain states and lifecycle events into vmmgr.ports terms."""

from __future__ import annotations

import libvirt

from vmmgr.ports import DomainState

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.SUSPENDED_TO_DISK,
}


def flatten_state(state: int) -> DomainState:
    return _STATES.get(state, DomainState.UNKNOWN)


#: lifecycle event -> (reason name, state it leaves the domain in; None = ask libvirt)
EVENTS: dict[int, tuple[str, DomainState | None]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", None),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", None),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", DomainState.RUNNING),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("suspended", DomainState.PAUSED),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", DomainState.RUNNING),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", DomainState.STOPPED),
    # "finished shutting down", by the guest or on a host request (qemu reports a destroy's
    # kill so): the domain is stopped or about to be, so its state is asked, not assumed
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", None),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", DomainState.SUSPENDED_TO_DISK),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", DomainState.CRASHED),
}

#: detail names per event, indexed by libvirt's detail enum value
DETAILS: dict[int, tuple[str, ...]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("added", "updated", "renamed", "from_snapshot"),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("removed", "renamed"),
    libvirt.VIR_DOMAIN_EVENT_STARTED: (
        "booted",
        "migrated",
        "restored",
        "from_snapshot",
        "wakeup",
        "recreated",
    ),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: (
        "paused",
        "migrated",
        "ioerror",
        "watchdog",
        "restored",
        "from_snapshot",
        "api_error",
        "postcopy",
        "postcopy_failed",
    ),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: (
        "unpaused",
        "migrated",
        "from_snapshot",
        "postcopy",
        "postcopy_failed",
    ),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: (
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from_snapshot",
        "recreated",
    ),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("finished", "guest", "host"),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("memory", "disk"),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("panicked", "crashloaded"),
}


def event_names(event: int, detail: int) -> tuple[str, str, DomainState | None]:
    """(reason, detail name, state or None when the state must be read from libvirt).

    A definition (added or updated) or an undefine (a running domain stays, as transient)
    says nothing about the run state, so that is read when the event is handled: an added
    domain is stopped when libvirt tells it, but may be running by the time it is handled.
    A finished shutdown is read too: the domain is stopped then, or about to be.
    """
    reason, state = EVENTS.get(event, (f"event-{event}", DomainState.UNKNOWN))
    details = DETAILS.get(event, ())
    detail_name = details[detail] if 0 <= detail < len(details) else str(detail)
    return reason, detail_name, state


CLOSE_REASONS: dict[int, str] = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}
