"""How a call ends: the one place that turns exceptions into gRPC status codes.

Handlers raise domain errors (InvalidRequestError) or an explicit RpcStatusError; `rpc` maps them,
hides anything unexpected behind a reference that matches the server log, and records the
per-call metrics. docs/service.md's status table is the contract this module implements.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from router_model.errors import InvalidRequestError, item_field
from router_model.service.metrics import Metrics

log = logging.getLogger("router_model.service")

# Trailing metadata key that names the offending request field on INVALID_ARGUMENT.
FIELD_METADATA_KEY = "router-invalid-field"
INTERNAL_MESSAGE = "internal error"

Handler = Callable[[Any, Any, grpc.ServicerContext], Any]


class RpcStatusError(Exception):
    """Ends an RPC with a given status code; raised inside handlers, mapped by `rpc`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def check_deadline(context: grpc.ServicerContext) -> None:
    """Refuse to start work the caller no longer waits for."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request was routed")
    if not context.is_active():
        raise RpcStatusError(grpc.StatusCode.CANCELLED, "the call was cancelled")


def proto_field(e: InvalidRequestError) -> str | None:
    """The error's field as a path into the proto request (`requests[3].messages[0].parts[1]`).

    The router names OpenAI-shaped paths (`messages[0].content[1]`); the proto calls them parts.
    """
    path = item_field(e.field, e.index)
    return path.replace(".content[", ".parts[") if path else path


def rpc(name: str) -> Callable[[Handler], Handler]:
    """Decorate a servicer method (its object has `metrics: Metrics`) to map errors and count calls."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            metrics: Metrics = self.metrics
            started = time.perf_counter()
            metrics.start_rpc()
            code = grpc.StatusCode.OK
            details = ""
            try:
                return fn(self, request, context)
            except RpcStatusError as e:
                code, details = e.code, e.details
            except InvalidRequestError as e:
                field = proto_field(e)
                code = grpc.StatusCode.INVALID_ARGUMENT
                details = f"{field}: {e.reason}" if field else e.reason
                if field:
                    context.set_trailing_metadata(((FIELD_METADATA_KEY, field),))
            except Exception:
                ref = uuid.uuid4().hex[:12]
                log.exception("unexpected error in %s (ref %s)", name, ref)
                code, details = grpc.StatusCode.INTERNAL, f"{INTERNAL_MESSAGE} (ref {ref})"
            finally:
                metrics.finish_rpc(name, code.name, time.perf_counter() - started)
            context.abort(code, details)

        return handler

    return wrap
