"""One server interceptor for every vmmgr.v1 RPC: request id, authentication, the permission
table, project scoping, quotas on CreateVM, metrics and the audit log.

Order per call: request id -> parse check -> authenticate -> authorize (vmmgr/auth/permissions)
-> scope the request to the caller's project -> quota (CreateVM) -> handler -> scope the
response -> metrics -> audit (mutating methods, whatever the result, refusals included).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from sqlmodel import Session

from vmmgr import calls, logs
from vmmgr.api.errors import _abort
from vmmgr.auth import permissions as perm
from vmmgr.auth.principal import Principal, authenticate
from vmmgr.auth.scope import scope_request, scope_response
from vmmgr.errors import Internal, InvalidArgument, PermissionDenied, VmmgrError
from vmmgr.metrics import Metrics
from vmmgr.state import Store, repo

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
_CLIENT_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
AUDIT_TEXT_LIMIT = 512
_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED")

Metadata = Sequence[tuple[str, str | bytes]]


class _Malformed:
    """Stands for a request whose bytes did not parse (answered INVALID_ARGUMENT, not
    grpc's own INTERNAL "Exception deserializing request")."""


MALFORMED = _Malformed()


def _safe_deserializer(inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if inner is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return inner(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's malformed input
            return MALFORMED

    return parse


def printable(text: str, limit: int = AUDIT_TEXT_LIMIT) -> str:
    """Control characters escaped and length capped: safe for any store and any terminal."""
    if len(text) <= limit and text.isprintable():  # the usual case: nothing to escape
        return text
    out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


def audit_target(request: Any) -> str:
    """What a request acts on, for the audit log: the first naming field that is set."""
    for path in ("vm", "name", "id", "host", "device_id", "address", "spec.name",
                 "group.name", "project.name", "target"):
        msg = request
        for part in path.split("."):
            msg = getattr(msg, part, None)
            if msg is None:
                break
        if isinstance(msg, str) and msg:
            return msg
    return ""


def audit_project(request: Any, who: Principal | None) -> str:
    for path in ("project", "spec.project"):
        msg = request
        for part in path.split("."):
            msg = getattr(msg, part, None)
        if isinstance(msg, str) and msg:
            return msg
    return (who.project or "") if who is not None else ""


def _peer_cert_name(context: grpc.ServicerContext) -> str:
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:  # noqa: BLE001 - no auth context on plaintext transports
        return ""
    return names[0].decode("utf-8", "replace") if names else ""


@dataclass
class _Call:
    method: str
    request_id: str
    generated_id: bool
    started: float
    previous_rid: str
    who: Principal | None = None
    request: Any = None
    error: str = ""
    response_note: str = ""
    completed: bool = False
    served: calls.Call | None = None  # what the services saw of this call (CreateVM)


class ApiInterceptor(grpc.ServerInterceptor):
    """See the module docstring. ``auth_required`` False still honours a presented token."""

    def __init__(self, store: Store, metrics: Metrics | None = None, *,
                 auth_required: bool = False, audit: bool = True) -> None:
        self.store = store
        self.metrics = metrics
        self.auth_required = auth_required
        self.audit = audit

    # ------------------------------------------------------------------ grpc hook

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method: str = details.method
        if handler is None or perm.is_public(method):
            return handler
        md: Metadata = tuple(details.invocation_metadata or ())
        deser = _safe_deserializer(handler.request_deserializer)
        ser = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                lambda req, ctx: self._unary(method, md, inner_uu, req, ctx),
                request_deserializer=deser, response_serializer=ser)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                lambda req, ctx: self._stream(method, md, inner_us, req, ctx),
                request_deserializer=deser, response_serializer=ser)
        # client-streaming methods (none in vmmgr.v1 today): authorize, no request scoping
        inner_s = handler.stream_unary or handler.stream_stream
        assert inner_s is not None

        def streaming(reqs: Any, ctx: grpc.ServicerContext) -> Any:
            call = self._begin(method, md, ctx)
            try:
                self._guard(call, ctx, lambda: self._authorize(call, md, ctx))
                call.completed = True
            finally:
                self._end(call, ctx)
            return inner_s(reqs, ctx)

        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                streaming, request_deserializer=deser, response_serializer=ser)
        return grpc.stream_stream_rpc_method_handler(
            streaming, request_deserializer=deser, response_serializer=ser)

    # ------------------------------------------------------------------ call shapes

    def _unary(self, method: str, md: Metadata, inner: Callable[[Any, Any], Any],
               request: Any, context: grpc.ServicerContext) -> Any:
        call = self._begin(method, md, context)
        call.request = request
        try:
            self._guard(call, context, lambda: self._before(call, md, request, context))
            if method == perm.CREATE_VM:
                response = self._create_vm(call, inner, request, context)
            else:
                response = inner(request, context)
            if call.who is not None and response is not None:
                who = call.who
                self._guard(call, context,
                            lambda: scope_response(method, response, who, self.store))
            op_id = getattr(getattr(response, "operation", None), "id", None)
            if isinstance(op_id, str) and op_id:
                call.response_note = f"operation {op_id}"
            call.completed = True
            return response
        finally:
            self._end(call, context)

    def _stream(self, method: str, md: Metadata, inner: Callable[[Any, Any], Iterator[Any]],
                request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = self._begin(method, md, context)
        call.request = request
        try:
            self._guard(call, context, lambda: self._before(call, md, request, context))
            yield from inner(request, context)
            call.completed = True
        finally:
            self._end(call, context)

    def _guard(self, call: _Call, context: grpc.ServicerContext, step: Callable[[], Any]) -> None:
        """Run one of our own steps; its errors become statuses (never a bare UNKNOWN)."""
        try:
            step()
        except VmmgrError as exc:
            self._refuse(call, context, exc)
        except Exception:  # noqa: BLE001 - e.g. the store failing under the token check
            log.exception("%s: the API interceptor failed", perm.short_name(call.method))
            self._refuse(call, context, Internal("internal error; see the daemon log"))

    # ------------------------------------------------------------------ steps

    def _begin(self, method: str, md: Metadata, context: grpc.ServicerContext) -> _Call:
        rid, generated = "", True
        for key, value in md:
            if key == REQUEST_ID_KEY and isinstance(value, str) and _CLIENT_RID_RE.match(value):
                rid, generated = value, False
        rid = rid or uuid.uuid4().hex
        call = _Call(method, rid, generated, time.perf_counter(), logs.request_id.get())
        logs.request_id.set(rid)
        if self.metrics is not None:
            self.metrics.rpc_in_flight.inc()
        with contextlib.suppress(Exception):  # the call may already be cancelled
            context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
        return call

    def _authorize(self, call: _Call, md: Metadata, context: grpc.ServicerContext) -> Principal:
        anonymous = "anonymous"
        if not self.auth_required:
            cn = _peer_cert_name(context)
            anonymous = f"cert:{cn}" if cn else anonymous
        who = authenticate(self.store, md, required=self.auth_required, anonymous=anonymous)
        call.who = who
        need = perm.required_role(call.method)
        if need is None:  # fail closed: a method the table forgot is refused
            raise PermissionDenied(f"{perm.short_name(call.method)} has no permission rule")
        if not perm.allows(who.role, call.method):
            raise PermissionDenied(
                f"{perm.short_name(call.method)} needs role {need.value} or higher; "
                f"{who.name!r} has role {who.role.value}")
        return who

    def _before(self, call: _Call, md: Metadata, request: Any,
                context: grpc.ServicerContext) -> None:
        if request is MALFORMED:
            raise InvalidArgument("request", "the request message could not be parsed")
        who = self._authorize(call, md, context)
        scope_request(call.method, request, who, self.store)

    def _create_vm(self, call: _Call, inner: Callable[[Any, Any], Any], request: Any,
                   context: grpc.ServicerContext) -> Any:
        """The operation records this call's request id, so a retry with the same id finds
        it (the quota is checked by the VM service, under its placement lock)."""
        if call.generated_id and not request.request_id:
            request.request_id = call.request_id
        served = calls.Call(
            call.request_id,
            call.generated_id,
            (lambda s, note: self._append_audit(s, call, "OK", f"[{call.request_id}] {note}"))
            if self.audit and call.method in perm.MUTATING
            else None,
        )
        call.served = served
        with calls.serving(served):
            return inner(request, context)

    def _refuse(self, call: _Call, context: grpc.ServicerContext, exc: VmmgrError) -> None:
        call.error = str(exc)
        if self.metrics is not None and exc.code in _REFUSALS:
            self.metrics.auth_failures.labels(exc.code).inc()
        if exc.code in _REFUSALS:
            log.info("%s refused for %s: %s", perm.short_name(call.method),
                     call.who.name if call.who else "unauthenticated", exc)
        _abort(context, exc)

    def _end(self, call: _Call, context: grpc.ServicerContext) -> None:
        try:
            code = _status_name(context, call.completed)
            if self.metrics is not None:
                self.metrics.rpc_in_flight.dec()
                self.metrics.observe_rpc(call.method, code, time.perf_counter() - call.started)
            written = code == "OK" and call.served is not None and call.served.audited
            if self.audit and call.method in perm.MUTATING and not written:
                self._write_audit(call, code, context)
        finally:
            logs.request_id.set(call.previous_rid)

    def _write_audit(self, call: _Call, code: str, context: grpc.ServicerContext) -> None:
        message = call.error or (_details(context) if code != "OK" else call.response_note)
        try:
            with self.store.session() as s:
                self._append_audit(s, call, code, f"[{call.request_id}] {message}".strip())
        except Exception:  # noqa: BLE001 - the call already happened; never hide that
            log.exception("could not write the audit record of %s", call.method)
            if self.metrics is not None:
                self.metrics.audit_write_errors.inc()


    @staticmethod
    def _append_audit(session: Session, call: _Call, code: str, message: str) -> None:
        request = call.request if call.request is not MALFORMED else None
        repo.append_audit(
            session,
            principal=printable(call.who.name if call.who else "unauthenticated", 128),
            method=perm.short_name(call.method),
            project=printable(audit_project(request, call.who), 128),
            target=printable(audit_target(request) if request is not None else "", 256),
            result_code=code,
            message=printable(message),
        )


def _status_name(context: grpc.ServicerContext, completed: bool) -> str:
    """The call's status: set by an abort, else OK when the handler returned, else UNKNOWN
    (an exception escaped, which grpc reports as UNKNOWN)."""
    try:
        code = context.code()
    except Exception:  # noqa: BLE001
        code = None
    if code is None:
        return "OK" if completed else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


def _details(context: grpc.ServicerContext) -> str:
    try:
        d = context.details()
    except Exception:  # noqa: BLE001
        return ""
    if isinstance(d, bytes):
        return d.decode("utf-8", "replace")
    return d or ""
