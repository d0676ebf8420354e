"""The LLM judge: one request per answer asking for a structured 1-10 verdict, parsed strictly.

The verdict must be exactly a JSON object `{"score": <integer 1-10>, "reason": <string>}`
(`reason` may be omitted) and nothing else: no surrounding prose, no code fence, no other keys,
no 7.5, no "8". Anything else is *no outcome*, recorded with the reason; a score is never
guessed from text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router_model.labelling.rubric import answer_text

SCORE_MIN, SCORE_MAX = 1, 10
JUDGE_OUTPUT_TOKENS = 80  # cost estimates: a verdict is a score and a sentence or two

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "reason"],
    "properties": {
        "score": {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX},
        "reason": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Verdict:
    """A judge's answer: `score` 1-10, or None with `problem` saying why it could not be read."""

    score: int | None
    reason: str | None = None
    problem: str | None = None
    raw: str = ""


def judge_body(prompt: str) -> dict[str, Any]:
    """The chat body sent to the judge (the model name is set by the caller)."""
    return {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}},
    }


def parse_verdict(text: str) -> Verdict:
    """Read a verdict strictly; never raises."""
    raw = text[:500]
    try:
        obj = json.loads(text)
    except (ValueError, TypeError):
        return Verdict(None, problem="the verdict is not a JSON object", raw=raw)
    if not isinstance(obj, dict):
        return Verdict(None, problem=f"the verdict is a JSON {type(obj).__name__}, not an object", raw=raw)
    extra = sorted(set(obj) - {"score", "reason"})
    if extra:
        return Verdict(None, problem=f"the verdict has unexpected key(s) {extra}", raw=raw)
    if "score" not in obj:
        return Verdict(None, problem="the verdict has no 'score'", raw=raw)
    score = obj["score"]
    if isinstance(score, bool) or not isinstance(score, int):
        return Verdict(None, problem=f"'score' must be an integer, got {score!r}", raw=raw)
    if not SCORE_MIN <= score <= SCORE_MAX:
        return Verdict(None, problem=f"'score' {score} is outside {SCORE_MIN}-{SCORE_MAX}", raw=raw)
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        return Verdict(None, problem=f"'reason' must be a string, got {type(reason).__name__}", raw=raw)
    return Verdict(score, reason, raw=raw)


def verdict_of(response: dict[str, Any]) -> Verdict:
    """The verdict in a judge's chat answer (its first choice's text)."""
    return parse_verdict(answer_text(response))
