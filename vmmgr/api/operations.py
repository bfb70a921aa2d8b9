"""OperationService and EventService servicers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

import grpc

from vmmgr.api import convert
from vmmgr.api.errors import servicer
from vmmgr.errors import InvalidArgument
from vmmgr.services.events import EventBus, EventRecord, matches
from vmmgr.services.operations import Operations
from vmmgr.state import Store, repo
from vmmgr.v1 import event_pb2, event_pb2_grpc, operation_pb2, operation_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext


@servicer
class OperationServicer(operation_pb2_grpc.OperationServiceServicer):
    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def GetOperation(
        self, request: operation_pb2.GetOperationRequest, context: Ctx
    ) -> operation_pb2.GetOperationResponse:
        return operation_pb2.GetOperationResponse(
            operation=convert.operation(self.ops.get(request.id))
        )

    def ListOperations(
        self, request: operation_pb2.ListOperationsRequest, context: Ctx
    ) -> operation_pb2.ListOperationsResponse:
        if request.page_size < 0 or request.page_size > 1000:
            raise InvalidArgument("page_size", "must be between 0 and 1000")
        state = convert.OP_STATE_NAMES.get(request.state, "")
        if request.state and not state:
            raise InvalidArgument("state", f"unknown state {request.state}")
        ops = self.ops.list_ops(
            state=state, target=request.target, kind=request.kind, limit=request.page_size or 100
        )
        return operation_pb2.ListOperationsResponse(operations=[convert.operation(o) for o in ops])

    def WaitOperation(
        self, request: operation_pb2.WaitOperationRequest, context: Ctx
    ) -> operation_pb2.WaitOperationResponse:
        if not 0 <= request.timeout_seconds <= 3600:
            raise InvalidArgument("timeout_seconds", "must be between 0 and 3600")
        op, done = self.ops.wait(request.id, request.timeout_seconds or 60.0)
        return operation_pb2.WaitOperationResponse(operation=convert.operation(op), done=done)

    def CancelOperation(
        self, request: operation_pb2.CancelOperationRequest, context: Ctx
    ) -> operation_pb2.CancelOperationResponse:
        return operation_pb2.CancelOperationResponse(
            operation=convert.operation(self.ops.cancel(request.id))
        )

    def WatchOperation(
        self, request: operation_pb2.WatchOperationRequest, context: Ctx
    ) -> Iterator[operation_pb2.WatchOperationResponse]:
        self.ops.get(request.id)  # NOT_FOUND before the stream starts
        for op in self.ops.watch(request.id, context.is_active):
            yield operation_pb2.WatchOperationResponse(operation=convert.operation(op))


@servicer
class EventServicer(event_pb2_grpc.EventServiceServicer):
    def __init__(self, store: Store, bus: EventBus) -> None:
        self.store = store
        self.bus = bus

    def _stored(
        self, kinds: list[str], resource: str, after_seq: int, limit: int
    ) -> list[EventRecord]:
        with self.store.read_session() as s:
            rows = repo.list_events(s, since_seq=after_seq, limit=limit, resource=resource or None)
        recs = [
            EventRecord(
                kind=r.kind,
                resource=r.resource,
                message=r.message,
                severity=r.severity,
                attributes={k: str(v) for k, v in r.attributes.items()},
                seq=r.seq or 0,
                time=r.time,
            )
            for r in rows
        ]
        return [r for r in recs if matches(r, kinds, resource)]

    def ListEvents(
        self, request: event_pb2.ListEventsRequest, context: Ctx
    ) -> event_pb2.ListEventsResponse:
        if not 0 <= request.limit <= 10_000:
            raise InvalidArgument("limit", "must be between 0 and 10000")
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        recs = self._stored(
            list(request.kinds), request.resource, request.after_seq, request.limit or 100
        )
        return event_pb2.ListEventsResponse(events=[convert.event(r) for r in recs])

    def WatchEvents(
        self, request: event_pb2.WatchEventsRequest, context: Ctx
    ) -> Iterator[event_pb2.WatchEventsResponse]:
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        kinds, resource = list(request.kinds), request.resource
        stream = self.bus.stream(kinds, resource, context.is_active)  # subscribe before replay
        last = request.after_seq
        if request.after_seq:
            for rec in self._stored(kinds, resource, request.after_seq, 10_000):
                last = max(last, rec.seq)
                yield event_pb2.WatchEventsResponse(event=convert.event(rec))
        for rec in stream:
            if rec.seq and rec.seq <= last:
                continue
            yield event_pb2.WatchEventsResponse(event=convert.event(rec))
