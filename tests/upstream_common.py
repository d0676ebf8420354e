"""What the endpoints of the local upstream (tests/gateway_upstream.py) share.

The token counts of every fake answer, the record of a received request, the fault a request's
`x-fake-fault` header chooses for a model, SSE event framing, the text of the last user message,
and which fake models are weak on which prompts (WEAK_MODELS answer HARD_WORDS prompts "(unsure)").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROMPT_TOKENS = 120
COMPLETION_TOKENS = 30
CACHED_TOKENS = 20
SNAPSHOT_SUFFIX = "-2024-fake"


@dataclass
class Received:
    raw: bytes
    body: dict[str, Any]
    headers: dict[str, str]
    path: str = ""


def fault_for(spec: str | None, model: str) -> str | None:
    """The fault an `x-fake-fault` header chooses for `model`: `F` for every model, `model=F,...` per model."""
    if not spec:
        return None
    for item in spec.split(","):
        name, sep, fault = item.strip().partition("=")
        if not sep:
            return name
        if name == model:
            return fault
    return None


def sse_event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(obj).encode() + b"\n\n"


WEAK_MODELS = ("mini", "mixtral")
HARD_WORDS = ("prove", "derive", "derivation", "implement", "debug", "optimize", "optimise", "algorithm", "analyse",
              "analyze", "design a", "calculate", "solve")


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""
