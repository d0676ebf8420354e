"""Fast checks of an answer: the gateway's escalation checks and part of the labelling rubric.

Each check looks only at the request body and the upstream's JSON answer, costs microseconds
to a millisecond, and names itself when it fails; the gateway then asks the strong model once
(route mode, a cheap model's non-streamed answer), and the rubric grades the answer as failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from router_model.errors import ConfigError

CHECK_LENGTH = "length"
CHECK_EMPTY = "empty"
CHECK_REFUSAL = "refusal"
CHECK_JSON = "json"
CHECK_JSON_SCHEMA = "json_schema"
CHECK_TOOL_ARGUMENTS = "tool_arguments"


DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"^\W*(i'?m|i am) (so |very )?sorry\b.{0,40}\b(can(no|')?t|unable|won'?t|not able)\b",
    r"^\W*(i|we) (can(no|')?t|am unable to|'m unable to|won'?t|am not able to) (help|assist|comply|provide|do that)",
    r"^\W*sorry, (but )?i (can(no|')?t|won'?t)",
)


@dataclass(frozen=True)
class Checks:
    """Fast checks of a cheap answer (route mode, not streamed); a failed one escalates to the strong model."""

    json: bool = True
    json_schema: bool = True
    length: bool = True
    empty: bool = True
    refusal: bool = True
    tool_arguments: bool = True
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSAL_PATTERNS

    def __post_init__(self) -> None:
        object.__setattr__(self, "refusal_patterns", tuple(self.refusal_patterns))
        for i, pattern in enumerate(self.refusal_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"checks.refusal_patterns[{i}]: not a valid regular expression: {exc}") from None

    @property
    def any(self) -> bool:
        return any((self.json, self.json_schema, self.length, self.empty, self.refusal, self.tool_arguments))


@lru_cache(maxsize=64)
def _patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE | re.DOTALL) for p in patterns)


def schema_problem(schema: Any, value: Any) -> bool | None:
    """True when `value` breaks `schema`, False when it fits, None when the schema itself is unusable."""
    import jsonschema

    if not isinstance(schema, (Mapping, bool)):
        return None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        return not cls(schema).is_valid(value)
    except jsonschema.SchemaError:
        return None


def _choice_problem(choice: Mapping[str, Any], response_format: Any, checks: Checks) -> str | None:
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return CHECK_EMPTY if checks.empty else None
    if checks.length and choice.get("finish_reason") == "length":
        return CHECK_LENGTH
    content = message.get("content")
    tool_calls = message.get("tool_calls") or []
    has_call = bool(tool_calls) or bool(message.get("function_call"))
    text = content if isinstance(content, str) else ""
    if checks.refusal and message.get("refusal"):
        return CHECK_REFUSAL
    if checks.empty and not text.strip() and not has_call:
        return CHECK_EMPTY
    if checks.refusal and text and any(p.search(text) for p in _patterns(checks.refusal_patterns)):
        return CHECK_REFUSAL
    if checks.tool_arguments and isinstance(tool_calls, list):
        for call in tool_calls:
            fn = call.get("function") if isinstance(call, Mapping) else None
            args = fn.get("arguments") if isinstance(fn, Mapping) else None
            if not isinstance(args, str):
                return CHECK_TOOL_ARGUMENTS
            try:
                json.loads(args)
            except ValueError:
                return CHECK_TOOL_ARGUMENTS
    fmt = response_format.get("type") if isinstance(response_format, Mapping) else None
    if fmt in ("json_object", "json_schema") and not has_call and (checks.json or checks.json_schema):
        try:
            value = json.loads(text)
        except ValueError:
            return CHECK_JSON if checks.json else None
        if fmt == "json_schema" and checks.json_schema:
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if schema is not None and schema_problem(schema, value):
                return CHECK_JSON_SCHEMA
    return None


def failed_check(request: Mapping[str, Any], response: Mapping[str, Any], checks: Checks) -> str | None:
    """The name of the first check the answer fails (any choice), or None when it passes them all."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return CHECK_EMPTY if checks.empty else None
    response_format = request.get("response_format")
    for choice in choices:
        problem = _choice_problem(choice if isinstance(choice, Mapping) else {}, response_format, checks)
        if problem:
            return problem
    return None


def _responses_format(request: Mapping[str, Any]) -> Any:
    """The Responses API's `text.format` as chat's `response_format` (`json_schema` keeps its schema)."""
    text = request.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    return {"type": fmt["type"], "json_schema": {"schema": fmt.get("schema")}}


def failed_response_check(request: Mapping[str, Any], response: Mapping[str, Any], checks: Checks) -> str | None:
    """The Responses API's answer through the same checks: `status: incomplete` for want of output
    tokens is `length`; the `output_text` parts are the content, `refusal` parts the refusal,
    `function_call` items the tool calls (any other tool item counts as a call for `empty`)."""
    incomplete = response.get("status") == "incomplete"
    details = response.get("incomplete_details")
    cut = incomplete and (not isinstance(details, Mapping) or details.get("reason") in (None, "max_output_tokens"))
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[Any] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "message":
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, Mapping) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif isinstance(part, Mapping) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or "refusal"))
        elif kind == "function_call":
            calls.append({"function": {"arguments": item.get("arguments")}})
        elif isinstance(kind, str) and kind.endswith("_call"):  # a built-in tool's call (web search, files, ...)
            calls.append({"function": {"arguments": "{}"}})
    message = {"content": "".join(texts), "refusal": " ".join(refusals) or None, "tool_calls": calls}
    choice = {"message": message, "finish_reason": "length" if cut else "stop"}
    return _choice_problem(choice, _responses_format(request), checks)
