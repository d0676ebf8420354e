"""The labelled-log row format: one JSONL line of a labelled request log <-> one validated record.

Two line formats, detected per line, produce one record type:

* Format A (team log): ``prompt`` or ``messages`` + ``outcomes`` {model: {"passed": bool} |
  {"score": number in [0, 1]}}, optional ``id``, ``timestamp``, ``tags``, ``metadata``,
  ``input_tokens``, ``output_tokens``, and ``grading`` {model: {"answer": text,
  "token_logprobs": [numbers <= 0] (when asked for), ...}} as `router-label` and shadow grading
  write it (the answers train the answer-quality score, training/escalation.py). See ``data/README.md``.
* Format B (the normalized public files in ``shared/data``): ``id, prompt, source, label_type,
  models{name: outcome | null}``, optional ``context_turns`` (earlier user turns) and ``meta``.

`parse_line` validates one line or raises `RowError` (skip category, field, reason);
`LabelledRecord.to_row` and `write_log` write records back as format A rows that read back as
themselves. Reading whole files, accounting for every skipped row and choosing the model pair is
the reader's job (`router_model.offline.log`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router_model.jsonl import LineError, decode_object, request_from_line, tags_from_line
from router_model.request import parse_request

__all__ = ["LabelledRecord", "ParsedRow", "RowError", "parse_line", "write_log"]

# Float scores such as 8/10 must not fail a ">= 0.8" rubric because of rounding.
_SCORE_EPS = 1e-9
_OUTCOME_HINT = 'expected {"passed": bool} or {"score": number in [0,1]}'
_LABEL_TYPES = ("correctness", "judge_score_1_10")


@dataclass(frozen=True)
class _Parsed:
    classifier_text: str
    full_text: str


@dataclass(frozen=True)
class LabelledRecord:
    """One validated request with per-model outcomes, whatever format it came from."""

    id: str
    request: str | tuple[dict, ...]
    tags: tuple[str, ...]
    passed: Mapping[str, bool]
    scores: Mapping[str, float]
    category: str | None
    input_tokens: int | None
    output_tokens: int | None
    source_file: str
    line_no: int
    answers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # model -> its answer, when kept
    # model -> its answer's token log-probabilities, when the labeller asked for them and kept them
    token_logprobs: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @cached_property
    def _parsed(self) -> _Parsed:
        p = parse_request(self.request)
        return _Parsed(p.classifier_text, p.full_text)

    @property
    def classifier_text(self) -> str:
        """What the classifier sees (last user turn first, bounded context), parsed once."""
        return self._parsed.classifier_text

    @property
    def full_text(self) -> str:
        """All text of the request: what token estimates are based on."""
        return self._parsed.full_text

    def to_row(self, models: Sequence[str]) -> dict[str, Any]:
        """The record as a team-format (A) log row with the outcomes of `models`; reads back as itself."""
        row: dict[str, Any] = {"id": self.id}
        if isinstance(self.request, str):
            row["prompt"] = self.request
        else:
            row["messages"] = list(self.request)
        if self.tags:
            row["tags"] = list(self.tags)
        if self.category is not None:
            row["metadata"] = {"category": self.category}
        for key in ("input_tokens", "output_tokens"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        row["outcomes"] = {m: {"score": self.scores[m]} for m in models}
        kept: dict[str, dict[str, Any]] = {m: {"answer": self.answers[m]} for m in models if m in self.answers}
        for m in models:
            if m in self.token_logprobs:
                kept.setdefault(m, {})["token_logprobs"] = list(self.token_logprobs[m])
        if kept:
            row["grading"] = kept
        return row


def write_log(records: Sequence[LabelledRecord], models: Sequence[str], path: Path) -> Path:
    """Write records as a team-format log (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_row(models), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


@dataclass
class ParsedRow:
    """A line that passed validation (the reader checks the model pair after every file is read)."""

    fmt: str  # "outcomes" (format A) or "models" (format B): the field that holds the outcomes
    id: str
    request: str | tuple[dict, ...]
    classifier_text: str
    full_text: str
    tags: tuple[str, ...]
    passed: dict[str, bool]
    scores: dict[str, float]
    category: str | None
    input_tokens: int | None
    output_tokens: int | None
    fidx: int = 0
    file: str = ""
    line_no: int = 0
    answers: dict[str, str] = field(default_factory=dict)
    token_logprobs: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def record(self) -> LabelledRecord:
        """The validated record; its request is already parsed, so it is not parsed again."""
        rec = LabelledRecord(
            id=self.id, request=self.request, tags=self.tags,
            passed=MappingProxyType(self.passed), scores=MappingProxyType(self.scores),
            category=self.category, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            source_file=self.file, line_no=self.line_no, answers=MappingProxyType(self.answers),
            token_logprobs=MappingProxyType(self.token_logprobs),
        )
        rec.__dict__["_parsed"] = _Parsed(self.classifier_text, self.full_text)
        return rec


class RowError(Exception):
    """What is wrong with one line: the skip category, the field (None: the whole line) and why."""

    def __init__(self, category: str, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.field = field
        self.reason = reason


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_score(v: Any, fld: str) -> float:
    if not _is_number(v):
        raise RowError("bad_outcome", fld, f"score must be a number in [0,1], got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < 0.0 or f > 1.0:
        raise RowError("bad_outcome", fld, f"score {v!r} is outside [0, 1]")
    return f


def _opt_count(obj: Mapping[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise RowError("bad_field", key, f"expected an integer >= 0, got {v!r}")
    return v


def _line(fn, obj):
    try:
        return fn(obj)
    except LineError as e:
        raise RowError(e.category, e.field, e.reason) from None


def _request_of(obj: Mapping[str, Any]) -> tuple[str | tuple[dict, ...], str, str]:
    """(request as stored in the record, classifier text, full text)."""
    request, parsed = _line(request_from_line, obj)
    stored = request if isinstance(request, str) else tuple(request)
    return stored, parsed.classifier_text, parsed.full_text


def _parse_format_a(obj: Mapping[str, Any], threshold: float, default_id: str) -> ParsedRow:
    rid = obj.get("id", default_id)
    if not isinstance(rid, str) or not rid:
        raise RowError("bad_field", "id", f"expected a non-empty string, got {rid!r}")
    request, ctext, ftext = _request_of(obj)
    ts = obj.get("timestamp")
    if ts is not None and not (isinstance(ts, str) or _is_number(ts)):
        raise RowError("bad_field", "timestamp", f"expected a string or a number, got {ts!r}")
    tags = _line(tags_from_line, obj) or ()
    meta = obj.get("metadata")
    category = None
    if meta is not None:
        if not isinstance(meta, dict):
            raise RowError("bad_field", "metadata", f"expected an object, got {type(meta).__name__}")
        category = meta.get("category")
        if category is not None and not isinstance(category, str):
            raise RowError("bad_field", "metadata.category", f"expected a string, got {category!r}")
    in_tok = _opt_count(obj, "input_tokens")
    out_tok = _opt_count(obj, "output_tokens")
    outcomes = obj["outcomes"]
    if not isinstance(outcomes, dict) or not outcomes:
        raise RowError(
            "bad_outcome", "outcomes", f"expected a non-empty object mapping model name -> outcome, got {outcomes!r}"
        )
    passed: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for model, oc in outcomes.items():
        fld = f"outcomes.{model}"
        if not model.strip():
            raise RowError("bad_outcome", "outcomes", "a model name is empty")
        if isinstance(oc, dict) and set(oc) == {"passed"}:
            if not isinstance(oc["passed"], bool):
                raise RowError("bad_outcome", f"{fld}.passed", f"expected true or false, got {oc['passed']!r}")
            passed[model] = oc["passed"]
            scores[model] = 1.0 if oc["passed"] else 0.0
        elif isinstance(oc, dict) and set(oc) == {"score"}:
            sc = _check_score(oc["score"], f"{fld}.score")
            scores[model] = sc
            passed[model] = sc >= threshold - _SCORE_EPS
        else:
            raise RowError("bad_outcome", fld, f"unknown outcome type {oc!r}; {_OUTCOME_HINT}")
    return ParsedRow("outcomes", rid, request, ctext, ftext, tuple(tags), passed, scores, category, in_tok, out_tok,
                     answers=_answers_of(obj), token_logprobs=_token_logprobs_of(obj))


def _answers_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """`grading.<model>.answer` of a labelled row: the answers the labeller kept (none: {})."""
    grading = obj.get("grading")
    if grading is None:
        return {}
    if not isinstance(grading, dict):
        raise RowError("bad_field", "grading", f"expected an object mapping model name -> grading, got {grading!r}")
    out: dict[str, str] = {}
    for model, info in grading.items():
        answer = info.get("answer") if isinstance(info, dict) else None
        if answer is None:
            continue
        if not isinstance(answer, str):
            raise RowError("bad_field", f"grading.{model}.answer", f"expected a string, got {type(answer).__name__}")
        out[str(model)] = answer
    return out


_LOGPROB_SLACK = 1e-6  # a log-probability a hair above 0 is an upstream's float rounding, not bad data


def _token_logprobs_of(obj: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """`grading.<model>.token_logprobs` of a labelled row (`router-label --logprobs`; none: {})."""
    grading = obj.get("grading")
    out: dict[str, tuple[float, ...]] = {}
    for model, info in (grading.items() if isinstance(grading, dict) else ()):
        values = info.get("token_logprobs") if isinstance(info, dict) else None
        if values is None:
            continue
        field_name = f"grading.{model}.token_logprobs"
        if not isinstance(values, list):
            raise RowError("bad_field", field_name, f"expected a list of numbers, got {type(values).__name__}")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > _LOGPROB_SLACK:
                raise RowError("bad_field", f"{field_name}[{i}]", f"expected a log-probability (a number <= 0), got {v!r}")
        out[str(model)] = tuple(min(float(v), 0.0) for v in values)
    return out


def _parse_format_b(obj: Mapping[str, Any], threshold: float, default_id: str) -> ParsedRow:
    rid = obj.get("id", default_id)
    if not isinstance(rid, str) or not rid:
        raise RowError("bad_field", "id", f"expected a non-empty string, got {rid!r}")
    # The public format has a prompt (and earlier context_turns), never chat messages.
    request, ctext, ftext = _request_of({k: v for k, v in obj.items() if k != "messages"})
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise RowError("bad_field", "source", f"expected a string, got {source!r}")
    label_type = obj.get("label_type")
    if label_type not in _LABEL_TYPES:
        raise RowError("bad_outcome", "label_type", f"unknown label_type {label_type!r}; expected one of {list(_LABEL_TYPES)}")
    models = obj["models"]
    if not isinstance(models, dict):
        raise RowError("bad_outcome", "models", f"expected an object mapping model name -> outcome, got {models!r}")
    passed: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for model, v in models.items():
        if v is None:  # the model's answer could not be scored: no outcome for this row
            continue
        sc = _check_score(v, f"models.{model}")
        scores[model] = sc
        passed[model] = sc >= 0.5 if label_type == "correctness" else sc >= threshold - _SCORE_EPS
    return ParsedRow("models", rid, request, ctext, ftext, (), passed, scores, source, None, None)


def parse_line(raw: bytes, *, line_no: int, default_id: str, pass_threshold: float) -> ParsedRow | None:
    """One line (format A or B) as a validated row; None when it holds only whitespace (e.g. a lone BOM).

    `default_id` names a row without an ``id``; a score passes at `pass_threshold` (format B
    correctness labels at 0.5). Raises RowError for the first problem of the line.
    """
    obj = _line(lambda b: decode_object(b, first_line=line_no == 1), raw)
    if obj is None:
        return None
    if "outcomes" in obj:
        return _parse_format_a(obj, pass_threshold, default_id)
    if "models" in obj:
        return _parse_format_b(obj, pass_threshold, default_id)
    # Report a missing request first: a row with neither is not a request at all.
    _request_of(obj)
    raise RowError(
        "missing_outcomes", "outcomes",
        'missing; it must map each model name to {"passed": bool} or {"score": number in [0,1]}',
    )
