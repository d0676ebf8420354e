"""One JSONL line -> one request: the part every line-oriented reader shares.

The labelled-log row format (`router_model.offline.row`) and the batch scorer
(`router_model.score`) read the same request fields (`prompt` or `messages`, optional
`context_turns` and `tags`) and must refuse bad lines with the same words. Both go through here;
each adds its own fields (outcomes, ids) around it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router_model.errors import InvalidRequestError
from router_model.request import ParsedRequest, Request, has_text, parse_request

__all__ = ["LineError", "decode_object", "request_from_line", "tags_from_line"]


class LineError(Exception):
    """A line cannot be used. `category` is a short machine-readable reason (for skip counts);
    `field` names the offending field (None: the line as a whole)."""

    def __init__(self, category: str, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.category = category
        self.field = field
        self.reason = reason


def decode_object(raw: bytes, *, first_line: bool = False) -> dict[str, Any] | None:
    """Decode one line to a JSON object; None for a blank line. A BOM is allowed on the first line."""
    try:
        text = raw.decode("utf-8-sig" if first_line else "utf-8")
    except UnicodeDecodeError as e:
        raise LineError("invalid_json", None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LineError("invalid_json", None, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict):
        raise LineError("not_object", None, f"expected a JSON object per line, got {type(obj).__name__}")
    return obj


def _string_list(obj: Mapping[str, Any], key: str) -> list[str] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise LineError("bad_field", key, f"expected a list of strings, got {value!r}"[:200])
    return value


def request_from_line(obj: Mapping[str, Any]) -> tuple[Request, ParsedRequest]:
    """The request of a line (`prompt`, with earlier `context_turns`, or `messages`), validated.

    Returns the request as the router takes it and its parsed form.
    """
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt and has_messages:
        raise LineError("missing_request", "prompt", "give either 'prompt' or 'messages', not both")
    if not has_prompt and not has_messages:
        raise LineError("missing_request", None, "missing request: the line has neither 'prompt' nor 'messages'")
    request: Request
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise LineError("bad_field", "prompt", f"expected a string, got {type(prompt).__name__}")
        if not has_text(prompt):
            raise LineError("empty_prompt", "prompt", "the prompt is empty")
        turns = _string_list(obj, "context_turns") or []
        request = [{"role": "user", "content": t} for t in turns] + [{"role": "user", "content": prompt}] if turns else prompt
        category = "bad_field"
    else:
        messages = obj["messages"]
        if not isinstance(messages, list):
            raise LineError("bad_messages", "messages", f"expected a list of chat messages, got {type(messages).__name__}")
        request = messages
        category = "bad_messages"
    try:
        parsed = parse_request(request)
    except InvalidRequestError as e:
        raise LineError(category, e.field or ("prompt" if has_prompt else "messages"), e.reason) from None
    return request, parsed


def tags_from_line(obj: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The line's `tags` (None when absent)."""
    tags = _string_list(obj, "tags")
    return tuple(tags) if tags is not None else None
