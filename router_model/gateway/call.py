"""One chat-completion call as the gateway sees it: the parsed body, the decision, every attempt.

`Call` is the record the endpoint, the upstream sender and the accounting share for one request;
nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router_model.cost import Usage
from router_model.decision import RoutingDecision
from router_model.gateway.errors import BadRequestError, BodyTooLargeError, InvalidJSONError
from router_model.router import Router

REASON_PASSTHROUGH = "passthrough"
REASON_UNROUTABLE = "unroutable"
REASON_NO_ROUTER = "no-router"
CHAT_ENDPOINT = "chat_completions"


@dataclass
class Attempt:
    """One upstream call: the model asked, the status, and (when answered) its usage and dollars."""

    model: str
    status: int
    usage: Usage | None = None
    cost: float | None = None
    response_model: str | None = None


@dataclass
class Call:
    request_id: str
    body: dict[str, Any]
    raw: bytes
    requested: str
    stream: bool
    mode: str
    in_headers: Mapping[str, str]
    started: float
    router: Router | None = None
    decision: RoutingDecision | None = None
    reason: str = REASON_PASSTHROUGH
    target: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    escalated: str | None = None
    fallback: str | None = None
    final: Attempt | None = None
    finished: bool = False
    pending: asyncio.Task[None] | None = None  # observe mode: the decision, computed while the upstream answers

    def payload(self, model: str) -> bytes:
        """The body for `model`: the client's bytes when unchanged, else the same JSON with `model` replaced."""
        if model == self.requested:
            return self.raw
        body = dict(self.body)
        body["model"] = model
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the client's JSON): keep it escaped, as sent
            return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @property
    def served(self) -> str:
        """The model of the last upstream call (the answer's, or after a failed fallback the strong one)."""
        if self.final is not None:
            return self.final.model
        return self.attempts[-1].model if self.attempts else self.target

    def remaining(self, total: float) -> float:
        """Seconds left of the call's `total` deadline (`timeouts.total`, counted from `started`)."""
        return self.started + total - time.perf_counter()

    @property
    def routing(self) -> bool:
        """Route mode with a decision: the target may differ from what the client asked."""
        return self.mode == "route" and self.decision is not None


# Nesting deeper than this is refused (400 invalid_json), as in serde_json: far beyond any real chat
# completion (a response_format schema included), and well inside what json, the decision log and
# the answer checks can walk again without hitting Python's recursion limit.
MAX_JSON_DEPTH = 128


def _nested_deeper_than(raw: bytes, value: Any, limit: int) -> bool:
    """True when `value` (parsed from `raw`) nests more than `limit` arrays/objects deep."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # fast path: too few brackets to be that deep
        return False
    level: list[Any] = [value] if type(value) in (dict, list) else []
    depth = 1
    while level:  # one nesting level at a time (json.loads makes plain dicts and lists only)
        if depth > limit:
            return True
        inner: list[Any] = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is dict or kind is list:
                    inner.append(child)
        level = inner
        depth += 1
    return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a chat-completion object; a 400 naming the field when it is not one."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSONError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested arrays or objects: past json's recursion limit
        raise InvalidJSONError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _nested_deeper_than(raw, body, MAX_JSON_DEPTH):
        raise InvalidJSONError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise InvalidJSONError(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequestError("'model' must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")
    return body


def request_tags(headers: Mapping[str, str], body: Mapping[str, Any]) -> list[str] | None:
    """Routing tags: the `x-router-tags: a,b` header, else `metadata.router_tags` ("a,b") in the body."""
    text = headers.get("x-router-tags")
    if text is None:
        metadata = body.get("metadata")
        value = metadata.get("router_tags") if isinstance(metadata, Mapping) else None
        text = value if isinstance(value, str) else None
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def all_request_tags(headers: Mapping[str, str], body: Mapping[str, Any]) -> list[str]:
    """Every tag the request carries, header and body together (first seen first, no repeats).

    Routing lets the header win (`request_tags`); a privacy decision (shadow grading's
    `drop_tags`) must not, or a body tag such as `pii` is missed whenever a header tag is sent.
    """
    tags: list[str] = []
    metadata = body.get("metadata")
    value = metadata.get("router_tags") if isinstance(metadata, Mapping) else None
    getlist = getattr(headers, "getlist", None)  # every x-router-tags header, when sent more than once
    sent = list(getlist("x-router-tags")) if getlist is not None else [headers.get("x-router-tags")]
    for text in (*sent, value if isinstance(value, str) else None):
        for tag in (text or "").split(","):
            if tag.strip() and tag.strip() not in tags:
                tags.append(tag.strip())
    return tags


def request_mode(configured: str, headers: Mapping[str, str]) -> str:
    """The call's mode: `x-router-mode: observe` turns routing off for one request (never on)."""
    forced = headers.get("x-router-mode")
    if forced is None:
        return configured
    forced = forced.strip().lower()
    if forced not in ("observe", "route"):
        raise BadRequestError(f"x-router-mode must be 'observe' or 'route', got {forced!r}", param="x-router-mode")
    return "observe" if forced == "observe" else configured


async def read_body(stream: Any, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    length = headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
