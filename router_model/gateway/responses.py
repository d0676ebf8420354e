"""POST /v1/responses (the Responses API): the routed flow (routed.py) with the Responses protocol.

The router decides on the request's `input` (a string, or message items) and `instructions`,
read as chat messages (`responses_messages`); the body goes upstream with only `model` replaced;
cost comes from the answer's `usage` (`input_tokens`, `output_tokens`,
`input_tokens_details.cached_tokens`), a stream's from its `response.completed` event. Shadow
grading is not offered (it asks the other model through chat completions).

Conversations keep their model (affinity.py): after a decided answer, its `function_call` items
are remembered under the conversation's hash (a later turn of `function_call_output` items goes
back to that model) and its `id` under `response:<id>` (a later `previous_response_id` finds it);
a stream's from its `response.created` / `response.output_item.done` / `response.completed` events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router_model.answer_checks import failed_response_check
from router_model.dollars import Usage
from router_model.gateway.call import AnswerText, Protocol, parse_json_body
from router_model.gateway.errors import BadRequestError
from router_model.gateway.routed import RoutedEndpoint

RESPONSES_ENDPOINT = "responses"
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_IMAGE_PARTS = frozenset({"input_image"})


def parse_responses_body(raw: bytes) -> dict[str, Any]:
    """A Responses API request body; a 400 naming the field when `input` or `instructions` is of the wrong type."""
    body = parse_json_body(raw)
    if "input" in body and not isinstance(body["input"], (str, list)):
        raise BadRequestError("'input' must be a string or an array of items", param="input")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise BadRequestError("'instructions' must be a string", param="instructions")
    return body


def _content(content: Any) -> Any:
    """A message item's content as chat content: text parts kept, images flagged, other parts (files, audio) left out."""
    if not isinstance(content, list):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind in _IMAGE_PARTS:
            parts.append({"type": "input_image"})
    return parts


def _item_message(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """One input item as a chat message (None: an item the router does not read, e.g. reasoning)."""
    kind = item.get("type", "message")
    if kind == "message":
        return {"role": item.get("role"), "content": _content(item.get("content"))}
    if kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": _content(output)}
    return None


def responses_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Responses request as the router's chat messages: `instructions` as a system message,
    then `input` (a string is one user message; message items keep their role, `input_text`
    parts their text; function calls and their outputs become assistant tool calls and tool
    messages). The router reads the latest user content first, as for chat."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            message = _item_message(item) if isinstance(item, Mapping) else None
            if message is not None:
                messages.append(message)
    return messages


def responses_stream_usage(event: Mapping[str, Any]) -> tuple[Usage | None, str | None]:
    """A `response.*` event's `response.usage` (set on `response.completed`) and `response.model`."""
    response = event.get("response")
    if not isinstance(response, Mapping):
        return None, None
    model = response.get("model")
    return Usage.from_responses_usage(response.get("usage")), model if isinstance(model, str) else None


def responses_turn(answer: Mapping[str, Any]) -> list[Any] | None:
    """A Responses answer's `output` items as the router's messages (as a later request's `input`
    holding them reads), when it has `function_call` items; None when it has none."""
    output = answer.get("output")
    items = [i for i in output if isinstance(i, Mapping)] if isinstance(output, list) else []
    if not any(i.get("type") == "function_call" for i in items):
        return None
    return [m for m in (_item_message(i) for i in items) if m is not None]


_RESPONSE_KEY = "response:"


def response_key(answer: Mapping[str, Any]) -> str | None:
    """The affinity key of a Responses answer: its `id` (what a later `previous_response_id` names)."""
    rid = answer.get("id")
    return _RESPONSE_KEY + rid if isinstance(rid, str) and rid else None


def continued_key(body: Mapping[str, Any]) -> str | None:
    """The affinity key of the answer a request continues: its `previous_response_id`."""
    rid = body.get("previous_response_id")
    return _RESPONSE_KEY + rid if isinstance(rid, str) and rid else None


def responses_answer_text(answer: Mapping[str, Any]) -> AnswerText:
    """A Responses answer's `output_text` parts (its `function_call` items as JSON when it has no
    text, as chat's), and "length" when it is incomplete for want of output tokens."""
    output = answer.get("output")
    items = [i for i in output if isinstance(i, Mapping)] if isinstance(output, list) else []
    texts = [part["text"] for i in items if i.get("type") == "message" and isinstance(i.get("content"), list)
             for part in i["content"]
             if isinstance(part, Mapping) and part.get("type") == "output_text" and isinstance(part.get("text"), str)]
    text = "".join(texts)
    calls = [i for i in items if i.get("type") == "function_call"] if not text.strip() else []
    if calls:
        text = json.dumps(calls, ensure_ascii=False)
    details = answer.get("incomplete_details")
    cut = answer.get("status") == "incomplete" and (
        not isinstance(details, Mapping) or details.get("reason") in (None, "max_output_tokens"))
    return AnswerText(text, "length" if cut else None, tool_calls=bool(calls))


class ResponsesStreamAnswer:
    """A streamed response's `id` (from `response.created` on) and `output` items (the finished items of
    `response.output_item.done`, or `response.completed`'s whole output; the `response.output_text.delta`
    text when neither came), and the final event's `status` and `incomplete_details`.
    It has `ended` at `response.completed` or `response.incomplete`, unless an `error` or
    `response.failed` event came."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._items: dict[int, Mapping[str, Any]] = {}
        self._output: list[Any] | None = None
        self._deltas: list[str] = []
        self._final: Mapping[str, Any] | None = None  # the response of response.completed / response.incomplete
        self._error = False

    @property
    def ended(self) -> bool:
        return self._final is not None and not self._error

    def feed(self, event: Mapping[str, Any]) -> None:
        kind, response = event.get("type"), event.get("response")
        if kind in ("error", "response.failed"):
            self._error = True
        if isinstance(response, Mapping):
            if isinstance(response.get("id"), str):
                self._id = response["id"]
            if kind == "response.completed" and isinstance(response.get("output"), list) and response["output"]:
                self._output = response["output"]
            if kind in ("response.completed", "response.incomplete"):
                self._final = response
        elif kind == "response.output_item.done" and isinstance(event.get("item"), Mapping):
            index = event.get("output_index")
            self._items[index if isinstance(index, int) else len(self._items)] = event["item"]
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self._deltas.append(event["delta"])

    def answer(self) -> Mapping[str, Any] | None:
        output = self._output if self._output is not None else [self._items[i] for i in sorted(self._items)]
        if not output and self._deltas:
            output = [{"type": "message", "content": [{"type": "output_text", "text": "".join(self._deltas)}]}]
        final = self._final or {}
        return {"id": self._id, "output": output, "status": final.get("status"),
                "incomplete_details": final.get("incomplete_details")}


RESPONSES = Protocol(
    RESPONSES_ENDPOINT, "/responses", parse_responses_body, responses_messages, Usage.from_responses_usage,
    responses_stream_usage, failed_response_check, shadow=False, turn=responses_turn,
    stream_answer=ResponsesStreamAnswer, answer_key=response_key, continues=continued_key,
    answer_text=responses_answer_text,
)


class Responses(RoutedEndpoint):
    """The Responses API endpoint of one gateway."""

    protocol: Protocol = RESPONSES
