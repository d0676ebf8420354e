"""One chat-completion call as the gateway sees it: the parsed body, the decision, every attempt.

`Call` is the record the endpoint, the upstream sender and the accounting share for one request;
nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import json
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router_model.answer_checks import Checks, failed_check
from router_model.answer_features import chat_token_logprobs
from router_model.decision import RoutingDecision
from router_model.dollars import Usage
from router_model.gateway.errors import BadRequestError, BodyTooLargeError, InvalidJSONError
from router_model.labelling.rubric import answer_text as rubric_answer_text
from router_model.router import Router

REASON_PASSTHROUGH = "passthrough"
REASON_UNROUTABLE = "unroutable"
REASON_NO_ROUTER = "no-router"
CHAT_ENDPOINT = "chat_completions"


@dataclass(frozen=True)
class Protocol:
    """What one routed API (chat completions, Responses) does its own way; the flow is shared (routed.py)."""

    endpoint: str  # the metrics' `endpoint` label and the decision log's `endpoint`
    path: str  # the upstream path under its base_url
    parse: Callable[[bytes], dict[str, Any]]  # the body, checked (a 400 naming the field)
    messages: Callable[[Mapping[str, Any]], Any]  # the body as the router's request (chat messages)
    usage: Callable[[Any], Usage | None]  # an answer's `usage` block
    stream_usage: Callable[[Mapping[str, Any]], tuple[Usage | None, str | None]]  # one SSE event: (usage, model)
    check: Callable[[Mapping[str, Any], Mapping[str, Any], Checks], str | None]  # the failed escalation check
    shadow: bool = True  # shadow grading (chat-completion calls to the other model and the judge)
    # Affinity (affinity.py): an answer -> its assistant turn when it made tool calls (None: it made none),
    # and for streams a reader that rebuilds the answer from its SSE events (see `chat_turn`).
    turn: Callable[[Mapping[str, Any]], list[Any] | None] | None = None
    stream_answer: Callable[[], StreamAnswer] | None = None
    # Conversations the upstream keeps (the Responses API's `previous_response_id`): the affinity key a
    # later request names an answer by (None: the answer has none), and the key a request continues.
    answer_key: Callable[[Mapping[str, Any]], str | None] | None = None
    continues: Callable[[Mapping[str, Any]], str | None] | None = None
    provider: str = "openai"  # "anthropic": the `anthropic` upstream, its key sent as x-api-key
    # The answer-quality score (router_model/answer_score.py): an answer -> its text and the upstream's
    # finish reason when it says the answer was cut off ("length", "max_tokens"); None: not scored.
    answer_text: Callable[[Mapping[str, Any]], AnswerText] | None = None
    # The API returns an answer's token log-probabilities when the body says `"logprobs": true`
    # (chat completions): the gateway asks for them when the answer score or shadow grading reads them.
    logprobs: bool = False


@dataclass(frozen=True)
class AnswerText:
    """What the answer score reads of an answer: its text, its finish reason (None: none given), and
    whether the text is the answer's tool calls (those are not scored: the score learned from text
    answers, and a tool loop stays with the model that started it)."""

    text: str
    finish_reason: str | None = None
    tool_calls: bool = False
    token_logprobs: tuple[float, ...] | None = None  # None: the answer carries none


class StreamAnswer(typing.Protocol):
    """Rebuilds a streamed answer from its SSE events: enough of it for `Protocol.turn` and
    `Protocol.answer_key` (affinity), and for `Protocol.answer_text` (the answer score of a buffered
    stream, `--buffer-streams`). `ended`: the stream's last event came (a chat chunk's
    `finish_reason`, `response.completed`, `message_stop`) and no error event did."""

    def feed(self, event: Mapping[str, Any]) -> None: ...

    def answer(self) -> Mapping[str, Any] | None: ...

    @property
    def ended(self) -> bool: ...


def chat_turn(answer: Mapping[str, Any]) -> list[Any] | None:
    """A chat completion's assistant message when it made tool calls."""
    choices = answer.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else None
    if isinstance(message, Mapping) and message.get("tool_calls"):
        return [message]
    return None


class ChatStreamAnswer:
    """A streamed chat completion's text, tool-call ids and `finish_reason`, as the answer
    `chat_turn` and `chat_answer_text` read (the first choice's)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._error = False
        self._logprobs: list[Any] | None = None  # the chunks' `logprobs.content` tokens, when they carry them

    @property
    def ended(self) -> bool:
        return self._finish is not None and not self._error

    def feed(self, event: Mapping[str, Any]) -> None:
        if event.get("error") is not None:  # an error event in the stream
            self._error = True
            return
        choices = event.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else None
        if choice is None or choice.get("index", 0) != 0:
            return
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, Mapping) and isinstance(logprobs.get("content"), list):
            self._logprobs = [*(self._logprobs or ()), *logprobs["content"]]
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            return
        if isinstance(delta.get("content"), str):
            self._text.append(delta["content"])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, Mapping):
                index = call.get("index")
                got = self._calls.setdefault(index if isinstance(index, int) else len(self._calls), {})
                if isinstance(call.get("id"), str):
                    got["id"] = call["id"]

    def answer(self) -> Mapping[str, Any] | None:
        message = {"role": "assistant", "content": "".join(self._text) or None,
                   "tool_calls": [self._calls[i] for i in sorted(self._calls)]}
        choice: dict[str, Any] = {"message": message, "finish_reason": self._finish}
        if self._logprobs is not None:
            choice["logprobs"] = {"content": self._logprobs}
        return {"choices": [choice]}


def chat_answer_text(answer: Mapping[str, Any]) -> AnswerText:
    """A chat completion's first choice: its text (its tool calls as JSON when it has none, as the
    labelling rubric reads it) and its `finish_reason`."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    reason = choice.get("finish_reason")
    message = choice.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    calls = bool(message.get("tool_calls")) if isinstance(message, Mapping) else False
    return AnswerText(rubric_answer_text(answer), reason if isinstance(reason, str) else None,
                      tool_calls=calls and not (isinstance(content, str) and content.strip()),
                      token_logprobs=chat_token_logprobs(answer))


def json_bytes(obj: Any) -> bytes:
    """Compact JSON; a lone surrogate ("\ud800" in the client's or upstream's JSON) stays escaped, as sent."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def without_logprobs(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completion whose choices' `logprobs` (which the gateway asked for, not the caller) are
    null, as the API answers when they are not asked for."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        return dict(answer)
    return {**answer, "choices": [{**c, "logprobs": None} if isinstance(c, Mapping) and "logprobs" in c else c
                                  for c in choices]}


def chat_stream_usage(event: Mapping[str, Any]) -> tuple[Usage | None, str | None]:
    """A chat-completion chunk's `usage` and `model`."""
    model = event.get("model")
    return Usage.from_response(event.get("usage")), model if isinstance(model, str) else None


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
    protocol: Protocol = field(default_factory=lambda: CHAT)
    messages: Any = None  # the router's request form of the body, set when it is decided
    fresh_model: str | None = None  # the fresh decision's model when affinity kept another (gateway/affinity.py)
    answer_score: float | None = None  # the cheap answer's score (router_model/answer_score.py), when it was scored
    logprobs_added: str | None = None  # the model the gateway asks for token log-probabilities the caller did not ask for

    @property
    def asked_logprobs(self) -> bool:
        """The caller's body asks for token log-probabilities itself."""
        return self.body.get("logprobs") is True

    def payload(self, model: str) -> bytes:
        """The body for `model`: the client's bytes when unchanged, else the same JSON with `model` replaced
        (and `"logprobs": true` when the gateway asks `model` for them: `logprobs_added`)."""
        if model == self.requested and model != self.logprobs_added:
            return self.raw
        body = dict(self.body)
        body["model"] = model
        if model == self.logprobs_added:
            body["logprobs"] = True
        return json_bytes(body)

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


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object with a non-empty `model` and a boolean `stream` (if any);
    a 400 naming the field when it is not one (every routed API's common part)."""
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
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")
    return body


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a chat-completion object; a 400 naming the field when it is not one."""
    body = parse_json_body(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages")
    return body


CHAT: Protocol = Protocol(
    CHAT_ENDPOINT, "/chat/completions", parse_body, lambda body: body["messages"], Usage.from_response,
    chat_stream_usage, failed_check, turn=chat_turn, stream_answer=ChatStreamAnswer, answer_text=chat_answer_text,
    logprobs=True,
)


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
