"""Turn a request (prompt string or OpenAI-style chat messages) into what the router looks at.

Multi-turn policy: the classifier sees the *last user turn* first, then up to
`CONTEXT_CHARS` characters of the most recent earlier turns (newest first). The last user turn
is what the model must answer now, so it carries most of the difficulty signal; earlier turns
matter for follow-ups such as "rewrite your previous answer", so a bounded amount of them is
kept. Putting the last turn first means the head of the head+tail truncation always holds it.
Every text part of every message still counts toward the request's token length (the
long-context rule), because the LLM will read all of it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from router_model.errors import InvalidRequestError

ChatMessages = Sequence[Mapping[str, Any]]
Request = str | ChatMessages

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
TEXT_PART_TYPES = frozenset({"text", "input_text"})
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


def _message_text(message: Mapping[str, Any], index: int) -> tuple[str, bool]:
    field = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise InvalidRequestError(
            f"expected an object with 'role' and 'content', got {type(message).__name__}", field=field
        )
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(
            f"unknown role {role!r}; expected one of {sorted(ROLES)}", field=f"{field}.role"
        )
    content = message.get("content")
    if content is None:
        return "", False
    if isinstance(content, str):
        return _valid_text(content, f"{field}.content"), False
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        raise InvalidRequestError(
            f"expected a string or a list of parts, got {type(content).__name__}", field=f"{field}.content"
        )
    texts: list[str] = []
    has_image = False
    for j, part in enumerate(content):
        pfield = f"{field}.content[{j}]"
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
        else:
            raise InvalidRequestError(
                f"unknown part type {ptype!r}; expected 'text' or 'image_url'", field=f"{pfield}.type"
            )
    return "\n".join(texts), has_image


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
    parts = [_message_text(m, i) for i, m in enumerate(messages)]
    roles = [m["role"] for m in messages]
    has_image = any(img for _, img in parts)
    user_idx = [i for i, r in enumerate(roles) if r == "user" and has_text(parts[i][0])]
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
