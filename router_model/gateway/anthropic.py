"""POST /v1/messages: Anthropic's Messages API through the routed flow (routed.py) with its own `Protocol`.

The router decides on `system` and `messages` (content blocks: `text`, `image`, `tool_use`,
`tool_result`; router_model/request.py reads them). The body goes to the Anthropic-compatible
upstream of the chosen model (`models` entry, else `anthropic`, else `upstream`; a base URL
ending in /v1) with only `model` replaced; the caller's `x-api-key`, `anthropic-version` and
`anthropic-beta` go through, or the upstream's `api_key_env` key is sent as `x-api-key`. A stream
is relayed as it comes (`message_start`, `content_block_*`, `message_delta`, `message_stop`);
cost is from `usage` (`input_tokens`, `output_tokens`, `cache_read_input_tokens` at the cached
price, `cache_creation_input_tokens` at the cache-write price).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router_model.answer_checks import Checks, failed_check
from router_model.dollars import Usage
from router_model.gateway.call import AnswerText, Protocol, parse_body
from router_model.gateway.routed import RoutedEndpoint

MESSAGES_ENDPOINT = "messages"


def messages_request(body: Mapping[str, Any]) -> list[Any]:
    """The router's request: `system` (a string or text blocks) as a system turn, then `messages`."""
    system = body.get("system")
    head = [{"role": "system", "content": system}] if system else []
    return [*head, *body["messages"]]


def messages_stream_usage(event: Mapping[str, Any]) -> tuple[Usage | None, str | None]:
    """`message_start`'s `message.usage` and `message.model`; `message_delta`'s `usage` (its output tokens)."""
    message = event.get("message")
    if event.get("type") == "message_start" and isinstance(message, Mapping):
        model = message.get("model")
        return Usage.from_anthropic(message.get("usage")), model if isinstance(model, str) else None
    if event.get("type") == "message_delta":
        return Usage.from_anthropic(event.get("usage")), None
    return None, None


def failed_messages_check(request: Mapping[str, Any], response: Mapping[str, Any], checks: Checks) -> str | None:
    """A Messages answer through the chat checks: text blocks are the content, `tool_use` blocks the
    tool calls, `stop_reason: max_tokens` is `length`, `refusal` a refusal."""
    content = response.get("content")
    blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
    text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
    calls = [{"function": {"arguments": json.dumps(b.get("input", {}))}} for b in blocks if b.get("type") == "tool_use"]
    stop = response.get("stop_reason")
    message = {"content": text, "refusal": "refusal" if stop == "refusal" else None, "tool_calls": calls}
    choice = {"message": message, "finish_reason": "length" if stop == "max_tokens" else "stop"}
    return failed_check({}, {"choices": [choice]}, checks)


def messages_answer_text(answer: Mapping[str, Any]) -> AnswerText:
    """A Messages answer's text blocks (its `tool_use` blocks as JSON when it has no text, as chat's),
    and its `stop_reason` when that is `max_tokens`."""
    content = answer.get("content")
    blocks = [b for b in content if isinstance(b, Mapping)] if isinstance(content, list) else []
    text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
    calls = [b for b in blocks if b.get("type") == "tool_use"] if not text.strip() else []
    if calls:
        text = json.dumps(calls, ensure_ascii=False)
    return AnswerText(text, "max_tokens" if answer.get("stop_reason") == "max_tokens" else None,
                      tool_calls=bool(calls))


def messages_turn(answer: Mapping[str, Any]) -> list[Any] | None:
    """The answer as its assistant turn, when it has `tool_use` blocks."""
    content = answer.get("content")
    if isinstance(content, list) and any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in content):
        return [{"role": "assistant", "content": content}]
    return None


class MessagesStreamAnswer:
    """A streamed message's content blocks (text and tool-use ids), rebuilt from its events, and its
    `stop_reason` (`message_delta`). It has `ended` at `message_stop`, unless an `error` event came."""

    def __init__(self) -> None:
        self._blocks: dict[int, dict[str, Any]] = {}
        self._stop_reason: str | None = None
        self._stopped = False
        self._error = False

    @property
    def ended(self) -> bool:
        return self._stopped and not self._error

    def feed(self, event: Mapping[str, Any]) -> None:
        kind, index = event.get("type"), event.get("index")
        if kind == "error":
            self._error = True
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
        if not isinstance(index, int):
            return
        if kind == "content_block_start" and isinstance(event.get("content_block"), Mapping):
            block = event["content_block"]
            self._blocks[index] = {"type": block.get("type"), "id": block.get("id"), "text": block.get("text") or ""}
        elif kind == "content_block_delta" and index in self._blocks:
            delta = event.get("delta")
            if isinstance(delta, Mapping) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self._blocks[index]["text"] += delta["text"]

    def answer(self) -> Mapping[str, Any] | None:
        return {"content": [self._blocks[i] for i in sorted(self._blocks)], "stop_reason": self._stop_reason}


MESSAGES = Protocol(
    MESSAGES_ENDPOINT, "/messages", parse_body, messages_request, Usage.from_anthropic, messages_stream_usage,
    failed_messages_check, shadow=False, turn=messages_turn, stream_answer=MessagesStreamAnswer, provider="anthropic",
    answer_text=messages_answer_text,
)


class Messages(RoutedEndpoint):
    """The Anthropic Messages endpoint of one gateway."""

    protocol: Protocol = MESSAGES
