"""The one place where vmmgr errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from vmmgr import errors

log = logging.getLogger(__name__)

CODES: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

# Trailing metadata keys clients (and the CLI) read for machine-readable details.
MD_CODE = "vmmgr-error-code"
MD_FIELD = "vmmgr-error-field"
MD_DETAIL_PREFIX = "vmmgr-detail-"


def status_of(exc: errors.VmmgrError) -> grpc.StatusCode:
    return CODES.get(exc.code, grpc.StatusCode.INTERNAL)


def _abort(context: grpc.ServicerContext, exc: errors.VmmgrError) -> None:
    md: list[tuple[str, str]] = [(MD_CODE, exc.code)]
    if exc.field:
        md.append((MD_FIELD, exc.field))
    md += [(MD_DETAIL_PREFIX + k.lower().replace("_", "-"), v) for k, v in exc.details.items()]
    context.set_trailing_metadata(tuple(md))
    context.abort(status_of(exc), str(exc))


F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Wrap a servicer method (unary or server-streaming) so vmmgr errors become statuses."""

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except errors.VmmgrError as exc:
                _abort(context, exc)
            except Exception:  # noqa: BLE001 - last resort: never leak internals to clients
                log.exception("unhandled error in %s", method.__qualname__)
                _abort(context, errors.Internal("internal error; see the daemon log"))

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except errors.VmmgrError as exc:
            _abort(context, exc)
        except Exception:  # noqa: BLE001
            log.exception("unhandled error in %s", method.__qualname__)
            _abort(context, errors.Internal("internal error; see the daemon log"))

    return unary  # type: ignore[return-value]


C = TypeVar("C", bound=type)


def servicer(cls: C) -> C:
    """Class decorator: wrap every public RPC method defined on ``cls`` with translate_errors."""
    for name, member in list(vars(cls).items()):
        if name[0].isupper() and callable(member):
            setattr(cls, name, translate_errors(member))
    return cls
