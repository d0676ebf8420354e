"""Simple features of a cheap model's answer: the inputs of the answer-quality score.

One owner for training (`training/escalation.py` fits the score on labelled logs that kept both
answers) and serving (the gateway scores a cheap answer before returning it). Every feature is
computed from the answer text (and the upstream's finish reason when there is one) in well under
a millisecond, with no model: length, whether a final answer is stated and parses, hedging,
self-correction and refusal phrases, signs of a cut-off, code fences, repeated lines. Changing a
feature changes what a trained score means, so the list is versioned (`FEATURE_VERSION`) and an
artifact trained on another version is refused.

Token log-probabilities of the answer (`LOGPROB_FEATURES`) join them only when the labelled log
kept them for every cheap answer: `router-label --logprobs` or shadow grading's `logprobs: true`
ask the cheap model for them (chat completions' `"logprobs": true`), and the gateway then asks for
them on every cheap answer it scores and strips them for callers that did not ask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FEATURE_VERSION = 1

ANSWER_FEATURES: tuple[str, ...] = (
    "log_chars",  # log(1 + characters)
    "log_lines",  # log(1 + non-empty lines)
    "empty",  # no visible text
    "final_answer",  # states a final answer ("the answer is ...", "final answer:", \boxed{...})
    "final_choice",  # ... and it is a single option letter or a number
    "final_in_tail",  # the final answer ends in the last 15% of the text (reasoning, then the answer)
    "hedges",  # log(1 + hedging phrases: "might", "not sure", "possibly", ...)
    "self_corrections",  # log(1 + "wait", "actually", "let me re-", "on second thought", ...)
    "refusal",  # opens like a refusal or an apology
    "cut_off",  # the upstream said it stopped at the length limit, or the text ends mid-sentence
    "code_fences",  # log(1 + ``` fences)
    "unbalanced_fence",  # an odd number of ``` fences: code that was never closed
    "repeated_lines",  # share of non-empty lines that repeat an earlier line (looping output)
    "choices_named",  # log(1 + distinct "(X)" option letters named): weighing many options
    "digits",  # share of characters that are digits
)

# The answer's token log-probabilities (natural log, one per generated token), when kept.
LOGPROB_FEATURES: tuple[str, ...] = (
    "logprob_mean",  # mean over the answer's tokens
    "logprob_p10",  # 10th percentile: the least sure tokens
    "unsure_token_share",  # share of tokens with probability under 1/2
    "logprob_tail_mean",  # mean over the last TAIL_TOKENS tokens, where a final answer is stated
)
TAIL_TOKENS = 8
_HALF = math.log(0.5)

_FINAL = re.compile(
    r"(?:the\s+(?:final\s+|correct\s+|best\s+)?answer\s+is|final\s+answer\s*[:\-]|answer\s*:|\\boxed\{)"
    r"\s*\(?\s*([^\n]{0,40})",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"^\(?\s*(?:[A-J]|-?\d+(?:[.,]\d+)?)\s*\)?\s*(?:[.}\s]|$)")
_HEDGES = re.compile(
    r"\b(?:might|may be|maybe|perhaps|possibly|probably|not (?:entirely )?sure|unsure|uncertain|i think|"
    r"i believe|it seems|it appears|likely|unclear|hard to say|difficult to determine|cannot be determined|"
    r"none of the (?:options|above)|not (?:listed|among))\b",
    re.IGNORECASE,
)
_CORRECTIONS = re.compile(
    r"\b(?:wait|actually|hmm|let me re-?(?:check|calculate|consider|evaluate|examine|think)|on second thought|"
    r"i made (?:a|an) (?:mistake|error)|correction|re-?evaluat\w*|recalculat\w*|double-check)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m (?:so |very )?sorry|i apologi[sz]e|i (?:can(?:no|')?t|am unable to|'m unable to|won'?t)|"
    r"as an ai\b|unfortunately,? i)",
    re.IGNORECASE,
)
_OPTION = re.compile(r"\(([A-J])\)")
_ENDS_CLEANLY = re.compile(r"[.!?)\]}\"'`*|:>]\s*$|\d\s*$")


def answer_features(answer: str, *, finish_reason: str | None = None) -> np.ndarray:
    """The feature vector of one answer, in the order of ANSWER_FEATURES (float32)."""
    text = answer or ""
    stripped = text.strip()
    lines = [ln.strip() for ln in stripped.splitlines() if ln.strip()]
    n = len(stripped)
    finals = list(_FINAL.finditer(stripped))
    last = finals[-1] if finals else None
    fences = stripped.count("```")
    repeated = len(lines) - len(set(lines)) if lines else 0
    cut = finish_reason in ("length", "max_tokens") or (n > 0 and not _ENDS_CLEANLY.search(stripped))
    values = (
        math.log1p(n),
        math.log1p(len(lines)),
        float(n == 0),
        float(last is not None),
        float(last is not None and bool(_CHOICE.match(last.group(1).strip()))),
        float(last is not None and last.end() >= 0.85 * n),
        math.log1p(len(_HEDGES.findall(stripped))),
        math.log1p(len(_CORRECTIONS.findall(stripped))),
        float(bool(_REFUSAL.match(stripped))),
        float(cut),
        math.log1p(fences),
        float(fences % 2 == 1),
        repeated / len(lines) if lines else 0.0,
        math.log1p(len(set(_OPTION.findall(stripped)))),
        sum(c.isdigit() for c in stripped) / n if n else 0.0,
    )
    return np.asarray(values, dtype=np.float32)


def answer_feature_matrix(answers: Sequence[str], *, finish_reasons: Sequence[str | None] | None = None) -> np.ndarray:
    """(len(answers), len(ANSWER_FEATURES)) float32: one row per answer."""
    reasons = finish_reasons if finish_reasons is not None else [None] * len(answers)
    if len(reasons) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(reasons)} finish reasons")
    if not answers:
        return np.zeros((0, len(ANSWER_FEATURES)), dtype=np.float32)
    return np.stack([answer_features(a, finish_reason=r) for a, r in zip(answers, reasons)])


def logprob_features(token_logprobs: Sequence[float]) -> np.ndarray:
    """The LOGPROB_FEATURES of one answer's token log-probabilities (zeros for an empty answer)."""
    values = np.asarray(token_logprobs, dtype=float)
    if values.size == 0:
        return np.zeros(len(LOGPROB_FEATURES), dtype=np.float32)
    row = (values.mean(), np.percentile(values, 10), float((values < _HALF).mean()), values[-TAIL_TOKENS:].mean())
    return np.asarray(row, dtype=np.float32)


def logprob_feature_matrix(token_logprobs: Sequence[Sequence[float]]) -> np.ndarray:
    """(len(token_logprobs), len(LOGPROB_FEATURES)) float32: one row per answer."""
    if not token_logprobs:
        return np.zeros((0, len(LOGPROB_FEATURES)), dtype=np.float32)
    return np.stack([logprob_features(t) for t in token_logprobs])


def chat_token_logprobs(answer: Mapping[str, Any]) -> tuple[float, ...] | None:
    """A chat completion's first choice's token log-probabilities (`choices[0].logprobs.content[*].logprob`);
    None when the answer carries none (not asked for, or the upstream does not give them)."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else None
    logprobs = choice.get("logprobs") if choice is not None else None
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return None
    out: list[float] = []
    for token in content:
        value = token.get("logprob") if isinstance(token, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None  # not the documented shape: read as none rather than guessed
        out.append(float(value))
    return tuple(out)
