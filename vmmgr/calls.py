"""What the service layer may know about the RPC it is serving, set by the API interceptor.

Two facts only the transport has: whether the call's request id was made up for it (then no
earlier call can have used it, and looking for that earlier call is wasted work), and how to
write the call's audit record, so that a create can commit the record with its own change
instead of in a second transaction after it. Outside an RPC (policies, tests) there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlmodel import Session


@dataclass(slots=True)
class Call:
    request_id: str
    generated_id: bool  # the interceptor made the id up: it is new
    audit: Callable[[Session, str], None] | None  # (transaction, note): the OK record, if kept
    audited: bool = False  # the record went into a transaction (it counts once that commits)

    def audit_in(self, session: Session, note: str) -> None:
        """Add the call's success record to ``session``'s transaction (if audit is on)."""
        if self.audit is not None:
            self.audit(session, note)
            self.audited = True


_current: ContextVar[Call | None] = ContextVar("vmmgr_call", default=None)


def current() -> Call | None:
    return _current.get()


def is_new_request_id(request_id: str) -> bool:
    """True when ``request_id`` was generated for the call being served."""
    call = _current.get()
    return call is not None and call.generated_id and call.request_id == request_id


@contextmanager
def serving(call: Call) -> Iterator[Call]:
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)
