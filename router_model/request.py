"""Turn a request (prompt string or OpenAI-style chat messages) into what the router looks at.

Multi-turn policy: the classifier sees the *last user turn* first, then up to
`CONTEXT_CHARS` characters of the most recent earlier turns (newest first). The last user turn
is what the model must answer now, so it carries most of the difficulty signal; earlier turns
matter for follow-ups such as "rewrite your previous answer", so a bounded amount of them is
kept. Putting the last turn first means the head of the head+tail truncation always holds it.
Every text part of every message still counts toward the request's token length (the
long-context rule), because the LLM will read all of it.

Shapes read: chat messages (`system`, `developer`, `user`, `assistant` with `tool_calls`, `tool`);
parts `text` / `input_text` / `output_text`, images (`image_url`, `input_image`, Anthropic `image`);
Anthropic blocks `tool_use` (as `name(input)`) and `tool_result` (its nested content); Responses API
items `function_call` / `function_call_output`. Reasoning, documents and files are skipped; an
unknown part type is refused naming its field. A user turn of tool results only is not "the last
user turn": the question that started the tool loop still leads the classifier text.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from router_model.errors import InvalidRequestError

ChatMessages = Sequence[Mapping[str, Any]]
Request = str | ChatMessages

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
TOOL_USE_PART_TYPES = frozenset({"tool_use", "server_tool_use"})  # Anthropic: the model calls a tool
TOOL_RESULT_PART_TYPES = frozenset({"tool_result", "web_search_tool_result"})  # Anthropic: a tool's answer
# Parts the router does not read but that do not make a request unreadable (reasoning, files, refusals).
SKIPPED_PART_TYPES = frozenset({"thinking", "redacted_thinking", "document", "input_file", "file", "refusal", "reasoning"})
# Responses API input items without a role: what role they play in a conversation.
ITEM_ROLES = {"function_call": "assistant", "function_call_output": "tool", "custom_tool_call": "assistant",
              "custom_tool_call_output": "tool", "reasoning": "assistant"}
CONTEXT_CHARS = 1000
CONTEXT_SEPARATOR = "\n\n[context]\n"


_NOT_TEXT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})  # control, format, surrogate, private, unassigned


def has_text(text: str) -> bool:
    """True when `text` has a character a model could read: not only blanks and control characters.

    A prompt of NULs or zero-width characters tokenises to nothing; it is refused as empty.
    """
    return any(not ch.isspace() and unicodedata.category(ch) not in _NOT_TEXT for ch in text)


def _valid_text(text: str, field: str) -> str:
    """Refuse a lone surrogate ("\\ud800" is a valid JSON escape but not Unicode text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequestError(
            f"not valid Unicode text: lone surrogate {text[e.start]!r} at character {e.start}", field=field
        ) from None
    return text


@dataclass(frozen=True)
class ParsedRequest:
    """What the router needs from a request: the classifier's text and the rule inputs."""

    classifier_text: str
    full_text: str
    has_image: bool


@dataclass(frozen=True)
class _Turn:
    text: str
    has_image: bool
    role: str
    tool_only: bool  # carries only tool results (role `tool`, or a user turn of Anthropic `tool_result` blocks)


def _tool_call_text(name: Any, arguments: Any, field: str) -> str:
    """A tool call as the model wrote it: `name(arguments)` (the arguments' JSON text)."""
    label = name if isinstance(name, str) else ""
    if isinstance(arguments, str):
        args = arguments
    elif arguments is None:
        args = ""
    else:
        try:
            args = json.dumps(arguments, ensure_ascii=False)
        except (TypeError, ValueError):
            args = ""
    return _valid_text(f"{label}({args})" if label or args else "", field)


def _parts_text(content: Any, field: str) -> tuple[list[str], bool, bool]:
    """The texts of a content value (a string or a list of parts), whether it has an image, and
    whether every part is a tool result."""
    if isinstance(content, str):
        return [_valid_text(content, field)], False, False
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        raise InvalidRequestError(f"expected a string or a list of parts, got {type(content).__name__}", field=field)
    texts: list[str] = []
    has_image = False
    results = 0
    for j, part in enumerate(content):
        pfield = f"{field}[{j}]"
        if not isinstance(part, Mapping):
            raise InvalidRequestError(f"expected an object part, got {type(part).__name__}", field=pfield)
        ptype = part.get("type")
        if ptype in TEXT_PART_TYPES:
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError("a text part needs a string 'text'", field=f"{pfield}.text")
            texts.append(_valid_text(text, f"{pfield}.text"))
        elif ptype in IMAGE_PART_TYPES:
            has_image = True
        elif ptype in TOOL_USE_PART_TYPES:
            texts.append(_tool_call_text(part.get("name"), part.get("input"), f"{pfield}.input"))
        elif ptype in TOOL_RESULT_PART_TYPES:
            results += 1
            inner = part.get("content")
            if inner is not None:
                got, image, _ = _parts_text(inner, f"{pfield}.content")
                texts.extend(got)
                has_image = has_image or image
        elif ptype in SKIPPED_PART_TYPES:
            continue
        else:
            raise InvalidRequestError(
                f"unknown part type {ptype!r}; expected 'text' or 'image_url'", field=f"{pfield}.type"
            )
    return texts, has_image, bool(content) and results == len(content)


def _message_text(message: Mapping[str, Any], index: int) -> _Turn:
    field = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise InvalidRequestError(
            f"expected an object with 'role' and 'content', got {type(message).__name__}", field=field
        )
    role = message.get("role")
    item = message.get("type")
    if role is None and item in ITEM_ROLES:  # a Responses API item: a tool call, its output, reasoning
        role = ITEM_ROLES[item]
        if item in ("function_call", "custom_tool_call"):
            args = message.get("arguments", message.get("input"))
            return _Turn(_tool_call_text(message.get("name"), args, f"{field}.arguments"), False, role, False)
        if item == "reasoning":
            return _Turn("", False, role, False)
        output = message.get("output")
        texts, image, _ = _parts_text(output, f"{field}.output") if output is not None else ([], False, False)
        return _Turn("\n".join(texts), image, role, True)
    if role not in ROLES:
        raise InvalidRequestError(
            f"unknown role {role!r}; expected one of {sorted(ROLES)}", field=f"{field}.role"
        )
    content = message.get("content")
    texts, has_image, all_results = ([], False, False) if content is None else _parts_text(content, f"{field}.content")
    calls = message.get("tool_calls") if role == "assistant" else None
    if isinstance(calls, Sequence) and not isinstance(calls, (str, bytes, bytearray)):
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                texts.append(_tool_call_text(fn.get("name"), fn.get("arguments"), f"{field}.tool_calls[{j}].function"))
    tool_only = role == "tool" or (role == "user" and all_results)
    return _Turn("\n".join(t for t in texts if t), has_image, role, tool_only)


def is_tool_result_turn(messages: ChatMessages) -> bool:
    """True when the request's last message only carries tool results (chat: role `tool`; Anthropic:
    a user turn of `tool_result` blocks; Responses: `function_call_output` items), so the model that
    made the tool call should answer it. False for anything unreadable."""
    if isinstance(messages, (str, bytes, bytearray)) or not isinstance(messages, Sequence) or not messages:
        return False
    try:
        return _message_text(messages[-1], len(messages) - 1).tool_only
    except InvalidRequestError:
        return False


def parse_request(request: Request) -> ParsedRequest:
    """Validate a request and extract the classifier text, the full text and the image flag."""
    if isinstance(request, str):
        _valid_text(request, "prompt")
        if not has_text(request):
            raise InvalidRequestError("the prompt is empty", field="prompt")
        return ParsedRequest(request, request, False)
    if isinstance(request, (bytes, bytearray)) or not isinstance(request, Sequence):
        raise InvalidRequestError(
            f"expected a prompt string or a list of chat messages, got {type(request).__name__}",
            field="request",
        )
    messages = cast(ChatMessages, request)  # each item is checked by _message_text
    if len(messages) == 0:
        raise InvalidRequestError("the message list is empty", field="messages")
    turns = [_message_text(m, i) for i, m in enumerate(messages)]
    parts = [(t.text, t.has_image) for t in turns]
    has_image = any(t.has_image for t in turns)
    # The last user turn that is not only tool results: what the model must answer now.
    user_idx = [i for i, t in enumerate(turns) if t.role == "user" and not t.tool_only and has_text(t.text)]
    last = user_idx[-1] if user_idx else max(
        (i for i, (t, _) in enumerate(parts) if has_text(t)), default=None
    )
    if last is None:
        if has_image:
            return ParsedRequest("", "", True)
        raise InvalidRequestError("no message has any text", field="messages")
    context: list[str] = []
    budget = CONTEXT_CHARS
    for i in range(last - 1, -1, -1):
        if budget <= 0:
            break
        if not has_text(parts[i][0]):
            continue
        piece = parts[i][0][-budget:]
        context.append(piece)
        budget -= len(piece)
    text = parts[last][0]
    if context:
        text = text + CONTEXT_SEPARATOR + "\n".join(context)
    full = "\n".join(t for t, _ in parts if t)
    return ParsedRequest(text, full, has_image)
