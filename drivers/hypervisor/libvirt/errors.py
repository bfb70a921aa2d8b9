"""libvirtError -> vmmgr.errors, in one place.

NotFound for missing objects, AlreadyExists for duplicates, FailedPrecondition for "operation
invalid in this state", Unavailable when the connection itself failed (the caller may retry
after reconnect), DriverError for everything else. The libvirt message is kept; the libvirt
code and domain go into ``details``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from vmmgr.errors import (
    AlreadyExists,
    DriverError,
    FailedPrecondition,
    NotFound,
    Unavailable,
    VmmgrError,
)

NOT_FOUND_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_NODE_DEVICE,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_DOMAIN_METADATA,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    }
)
EXISTS_CODES = frozenset(
    {
        libvirt.VIR_ERR_DOM_EXIST,
        libvirt.VIR_ERR_STORAGE_VOL_EXIST,
        libvirt.VIR_ERR_NETWORK_EXIST,
    }
)
PRECONDITION_CODES = frozenset(
    {
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_ERR_RESOURCE_BUSY,
        # this host (or driver) cannot do it: a fact about the target, not a vmmgr failure
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    }
)
#: the connection is gone or cannot be used; reconnecting may help
CONNECTION_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_NO_SERVER,
        libvirt.VIR_ERR_NO_CLIENT,
    }
)
#: errors raised by the transport (client socket closed, keepalive timeout, I/O on the socket)
CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


def is_connection_error(err: libvirt.libvirtError) -> bool:
    code, domain = err.get_error_code(), err.get_error_domain()
    return code in CONNECTION_CODES or domain in CONNECTION_DOMAINS


def map_libvirt_error(err: libvirt.libvirtError, action: str) -> VmmgrError:
    """The vmmgr error for a libvirtError raised while doing ``action`` ("start vm X")."""
    code, domain = err.get_error_code(), err.get_error_domain()
    message = f"{action}: {err.get_error_message() or err}"
    details = {"libvirt_code": str(code), "libvirt_domain": str(domain)}
    if is_connection_error(err):
        return Unavailable(message, details=details)
    if code in NOT_FOUND_CODES:
        return NotFound(message, details=details)
    if code in EXISTS_CODES:
        return AlreadyExists(message, details=details)
    if code in PRECONDITION_CODES:
        return FailedPrecondition(message, details=details)
    return DriverError(message, details=details)


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block of libvirt calls; libvirtError leaves it as a vmmgr error."""
    try:
        yield
    except libvirt.libvirtError as e:
        raise map_libvirt_error(e, action) from e


def error_code(err: libvirt.libvirtError) -> int:
    code = err.get_error_code()
    return int(code) if code is not None else -1
