"""Servicers for API surface that later work fills in: every RPC answers UNIMPLEMENTED naming
the feature (and the README marks it "planned")."""

from __future__ import annotations

from typing import Any

import grpc

from vmmgr.api.errors import _abort
from vmmgr.errors import Unimplemented


def planned(base: type, feature: str) -> Any:
    """An instance of ``base`` (a generated *Servicer) whose RPCs all say ``feature`` is planned."""

    def make(name: str) -> Any:
        def rpc(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            _abort(context, Unimplemented(f"{name}: {feature} is planned, not implemented yet"))

        return rpc

    methods = {name: make(name) for name in vars(base) if name[0].isupper()}
    return type(f"Planned{base.__name__}", (base,), methods)()
