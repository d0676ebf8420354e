"""How a call ends: the one place that turns exceptions into gRPC status codes.

Handlers raise domain errors (InvalidRequestError) or an explicit RpcStatusError; `rpc` maps them,
hides anything unexpected behind a reference that matches the server log, and records the
per-call metrics. docs/service.md's status table is the contract this module implements.

Router handlers are registered with a pass-through deserializer (server.py), so `rpc` parses
the request bytes itself: a message gRPC would fail to decode (bad UTF-8 in a string field) is
the caller's INVALID_ARGUMENT, and an oversize one RESOURCE_EXHAUSTED, both counted like any
other call instead of vanishing inside gRPC as an uncounted INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from router_model.errors import InvalidRequestError, item_field
from router_model.service.limits import CallLimits
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


def check_deadline(context: grpc.ServicerContext, when: str = "before the request was routed") -> None:
    """Refuse work (or an answer) the caller no longer waits for.

    Called before routing, between batch chunks and after routing: a decision made after the
    deadline is never sent, so it is neither logged nor counted as OK.
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"the deadline passed {when}")
    if not context.is_active():
        raise RpcStatusError(grpc.StatusCode.CANCELLED, "the call was cancelled")


def parse_message(request_type: type[Message], data: bytes, max_bytes: int) -> Message:
    """Decode request bytes, refusing an oversize or undecodable message as the caller's fault."""
    if len(data) > max_bytes:
        raise RpcStatusError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request is {len(data)} bytes, over the limit of {max_bytes}"
        )
    try:
        return request_type.FromString(data)
    except DecodeError as e:
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name} message "
            f"(strings must be UTF-8): {e}",
        ) from None


def proto_field(e: InvalidRequestError) -> str | None:
    """The error's field as a path into the proto request (`requests[3].messages[0].parts[1]`).

    The router names OpenAI-shaped paths (`messages[0].content[1]`); the proto calls them parts.
    """
    path = item_field(e.field, e.index)
    return path.replace(".content[", ".parts[") if path else path


def rpc(name: str, request_type: type[Message]) -> Callable[[Handler], Handler]:
    """Decorate a servicer method to admit, parse, map errors and count calls.

    The servicer object has `metrics: Metrics` and `limits: CallLimits`. `request` may be the
    raw bytes (as served) or an already parsed `request_type` message (in-process callers).
    """

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            metrics: Metrics = self.metrics
            limits: CallLimits = self.limits
            started = time.perf_counter()
            metrics.start_rpc()
            code = grpc.StatusCode.OK
            details = ""
            admitted = False
            try:
                if not limits.admission.try_enter():
                    raise RpcStatusError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the server is busy ({limits.admission.limit} calls in progress); retry with backoff",
                    )
                admitted = True
                if isinstance(request, bytes):
                    request = parse_message(request_type, request, limits.max_message_bytes)
                response = fn(self, request, context)
                size = response.ByteSize()
                if size > limits.max_message_bytes:
                    raise RpcStatusError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the response would be {size} bytes, over the limit of {limits.max_message_bytes}",
                    )
                return response
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
                if admitted:
                    limits.admission.leave()
                metrics.finish_rpc(name, code.name, time.perf_counter() - started)
            context.abort(code, details)

        return handler

    return wrap
