"""One error hierarchy for the whole daemon.

Every error carries a stable ``code`` (the gRPC status name it maps to), a human message, and
optionally the request ``field`` it is about plus string ``details``. The api layer maps these to
gRPC status codes in exactly one place (vmmgr/api/errors.py); nothing else knows about gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class VmmgrError(Exception):
    """Base of every error vmmgr raises on purpose."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details: dict[str, str] = dict(details or {})

    def __str__(self) -> str:
        if self.field:
            return f"{self.field}: {self.message}"
        return self.message


class InvalidArgument(VmmgrError):
    """The request itself is malformed; ``field`` names the offending request field."""

    code = "INVALID_ARGUMENT"

    def __init__(
        self, field: str, message: str, *, details: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, field=field, details=details)


class NotFound(VmmgrError):
    code = "NOT_FOUND"


class AlreadyExists(VmmgrError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(VmmgrError):
    """The system is not in a state where the request can be honoured (e.g. VM is running)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(VmmgrError):
    code = "RESOURCE_EXHAUSTED"


class NoHostFits(ResourceExhausted):
    """Placement found no host; ``rejections`` maps filter name -> number of hosts it rejected."""

    def __init__(self, message: str, rejections: Mapping[str, int]) -> None:
        detail = {f"rejected_by.{k}": str(v) for k, v in rejections.items()}
        summary = ", ".join(f"{k}: {v}" for k, v in rejections.items() if v)
        super().__init__(f"{message} ({summary})" if summary else message, details=detail)
        self.rejections = dict(rejections)


class Unavailable(VmmgrError):
    """A host or backend cannot be reached right now; retrying later may succeed."""

    code = "UNAVAILABLE"


class Aborted(VmmgrError):
    code = "ABORTED"


class Cancelled(VmmgrError):
    code = "CANCELLED"


class DeadlineExceeded(VmmgrError):
    code = "DEADLINE_EXCEEDED"


class Unimplemented(VmmgrError):
    """A planned feature: the message names it."""

    code = "UNIMPLEMENTED"


class Unauthenticated(VmmgrError):
    code = "UNAUTHENTICATED"


class PermissionDenied(VmmgrError):
    code = "PERMISSION_DENIED"


class Internal(VmmgrError):
    code = "INTERNAL"


class DriverError(VmmgrError):
    """A driver (libvirt, sysfs, NVML...) failed; maps to INTERNAL unless a subclass says more."""

    code = "INTERNAL"
