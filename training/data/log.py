"""The one reader of labelled request logs.

Two line formats, detected per line, produce one validated record type:

* Format A (team log): ``prompt`` or ``messages`` + ``outcomes`` {model: {"passed": bool} |
  {"score": number in [0, 1]}}, optional ``id``, ``timestamp``, ``tags``, ``metadata``,
  ``input_tokens``, ``output_tokens``. See ``data/README.md``.
* Format B (the normalized public files in ``shared/data``): ``id, prompt, source, label_type,
  models{name: outcome | null}``, optional ``context_turns`` (earlier user turns) and ``meta``.

Bad rows are never dropped silently: by default every problem in every file is collected and
raised together as one ``LogFormatError``; with ``ReadOptions(skip_invalid=True)`` the rows are
skipped and counted per reason, so ``rows_read == rows_used + sum(skipped.values())``.

Which pair of models is routed between: the caller names ``(cheap, strong)``, or the reader
picks the two models that co-occur in the most rows and calls *cheap* the one with the LOWER
pass rate on the rows that have both (the cheap model is the weaker one; a router that sends
requests to the better model "to save money" would be pointless).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router_model.errors import ConfigError, RouterError
from router_model.jsonl import LineError, decode_object, request_from_line, tags_from_line
from router_model.request import parse_request

__all__ = [
    "LabelledRecord",
    "LogFormatError",
    "LogProblem",
    "LogReadResult",
    "ReadOptions",
    "read_logs",
    "write_log",
]

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


@dataclass(frozen=True)
class ReadOptions:
    """How strict to be: the pass rubric for scores, and whether to skip bad rows."""

    pass_threshold: float = 0.8
    skip_invalid: bool = False
    max_listed: int = 10
    # False keeps rows that lack the pair's outcomes (N-model training masks what a row lacks).
    require_pair: bool = True

    def __post_init__(self) -> None:
        if not (0.0 < self.pass_threshold <= 1.0):
            raise ConfigError(f"pass_threshold must be in (0, 1], got {self.pass_threshold!r}")
        if self.max_listed < 1:
            raise ConfigError(f"max_listed must be >= 1, got {self.max_listed!r}")


@dataclass(frozen=True)
class LogProblem:
    """One bad row (or file): where it is, which field, and why, in a grep-able one-liner."""

    file: str
    line_no: int
    field: str | None
    reason: str
    category: str = "invalid"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line_no}" if self.line_no else self.file
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class LogFormatError(RouterError, ValueError):
    """The log has rows that cannot be used; `.problems` lists the first ones, `.total` counts all."""

    def __init__(
        self,
        problems: Sequence[LogProblem],
        *,
        total: int | None = None,
        skippable: bool = True,
        headline: str | None = None,
    ) -> None:
        self.problems = tuple(problems)
        self.total = len(self.problems) if total is None else total
        lines = [headline or f"{self.total} problem(s) in the request log:"]
        lines += [f"  {p}" for p in self.problems]
        if self.total > len(self.problems):
            lines.append(f"  ... and {self.total - len(self.problems)} more ({self.total} in total)")
        if skippable:
            lines.append(
                "Fix these rows, or pass --skip-invalid to skip invalid rows "
                "(skipped rows are counted per reason in the read report)."
            )
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class LogReadResult:
    """Records for one (cheap, strong) pair plus the accounting that proves nothing was lost."""

    records: tuple[LabelledRecord, ...]
    cheap_model: str
    strong_model: str
    rows_read: int
    rows_used: int
    skipped: Mapping[str, int]
    problems: tuple[LogProblem, ...]
    data_sha256: str
    files: tuple[str, ...] = field(default=())


@dataclass
class _Row:
    """A row that passed per-line validation (model-pair checks come after all files are read)."""

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


class _RowError(Exception):
    def __init__(self, category: str, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.field = field
        self.reason = reason


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_score(v: Any, fld: str) -> float:
    if not _is_number(v):
        raise _RowError("bad_outcome", fld, f"score must be a number in [0,1], got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < 0.0 or f > 1.0:
        raise _RowError("bad_outcome", fld, f"score {v!r} is outside [0, 1]")
    return f


def _opt_count(obj: Mapping[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _RowError("bad_field", key, f"expected an integer >= 0, got {v!r}")
    return v


def _line(fn, obj):
    try:
        return fn(obj)
    except LineError as e:
        raise _RowError(e.category, e.field, e.reason) from None


def _request_of(obj: Mapping[str, Any]) -> tuple[str | tuple[dict, ...], str, str]:
    """(request as stored in the record, classifier text, full text)."""
    request, parsed = _line(request_from_line, obj)
    stored = request if isinstance(request, str) else tuple(request)
    return stored, parsed.classifier_text, parsed.full_text


def _parse_format_a(obj: Mapping[str, Any], threshold: float, default_id: str) -> _Row:
    rid = obj.get("id", default_id)
    if not isinstance(rid, str) or not rid:
        raise _RowError("bad_field", "id", f"expected a non-empty string, got {rid!r}")
    request, ctext, ftext = _request_of(obj)
    ts = obj.get("timestamp")
    if ts is not None and not (isinstance(ts, str) or _is_number(ts)):
        raise _RowError("bad_field", "timestamp", f"expected a string or a number, got {ts!r}")
    tags = _line(tags_from_line, obj) or ()
    meta = obj.get("metadata")
    category = None
    if meta is not None:
        if not isinstance(meta, dict):
            raise _RowError("bad_field", "metadata", f"expected an object, got {type(meta).__name__}")
        category = meta.get("category")
        if category is not None and not isinstance(category, str):
            raise _RowError("bad_field", "metadata.category", f"expected a string, got {category!r}")
    in_tok = _opt_count(obj, "input_tokens")
    out_tok = _opt_count(obj, "output_tokens")
    outcomes = obj["outcomes"]
    if not isinstance(outcomes, dict) or not outcomes:
        raise _RowError(
            "bad_outcome", "outcomes", f"expected a non-empty object mapping model name -> outcome, got {outcomes!r}"
        )
    passed: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for model, oc in outcomes.items():
        fld = f"outcomes.{model}"
        if not model.strip():
            raise _RowError("bad_outcome", "outcomes", "a model name is empty")
        if isinstance(oc, dict) and set(oc) == {"passed"}:
            if not isinstance(oc["passed"], bool):
                raise _RowError("bad_outcome", f"{fld}.passed", f"expected true or false, got {oc['passed']!r}")
            passed[model] = oc["passed"]
            scores[model] = 1.0 if oc["passed"] else 0.0
        elif isinstance(oc, dict) and set(oc) == {"score"}:
            sc = _check_score(oc["score"], f"{fld}.score")
            scores[model] = sc
            passed[model] = sc >= threshold - _SCORE_EPS
        else:
            raise _RowError("bad_outcome", fld, f"unknown outcome type {oc!r}; {_OUTCOME_HINT}")
    return _Row("outcomes", rid, request, ctext, ftext, tuple(tags), passed, scores, category, in_tok, out_tok)


def _parse_format_b(obj: Mapping[str, Any], threshold: float, default_id: str) -> _Row:
    rid = obj.get("id", default_id)
    if not isinstance(rid, str) or not rid:
        raise _RowError("bad_field", "id", f"expected a non-empty string, got {rid!r}")
    # The public format has a prompt (and earlier context_turns), never chat messages.
    request, ctext, ftext = _request_of({k: v for k, v in obj.items() if k != "messages"})
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise _RowError("bad_field", "source", f"expected a string, got {source!r}")
    label_type = obj.get("label_type")
    if label_type not in _LABEL_TYPES:
        raise _RowError("bad_outcome", "label_type", f"unknown label_type {label_type!r}; expected one of {list(_LABEL_TYPES)}")
    models = obj["models"]
    if not isinstance(models, dict):
        raise _RowError("bad_outcome", "models", f"expected an object mapping model name -> outcome, got {models!r}")
    passed: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for model, v in models.items():
        if v is None:  # the model's answer could not be scored: no outcome for this row
            continue
        sc = _check_score(v, f"models.{model}")
        scores[model] = sc
        passed[model] = sc >= 0.5 if label_type == "correctness" else sc >= threshold - _SCORE_EPS
    return _Row("models", rid, request, ctext, ftext, (), passed, scores, source, None, None)


def _iter_lines(path: Path, hasher: Any) -> Iterator[tuple[int, bytes]]:
    """Stream a file line by line (bytes), feeding the data hash as it goes."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, start=1):
            hasher.update(raw)
            yield i, raw


class _ProblemLog:
    """Counts every problem but keeps only the first `limit` (a huge bad log must not blow memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[tuple[tuple[int, int], LogProblem]] = []
        self.total = 0

    def add(self, order: tuple[int, int], problem: LogProblem) -> None:
        self.total += 1
        if len(self.kept) < self.limit:
            self.kept.append((order, problem))


def _merge(limit: int, *logs: _ProblemLog) -> tuple[LogProblem, ...]:
    kept = sorted((item for lg in logs for item in lg.kept), key=lambda t: t[0])
    return tuple(p for _, p in kept[:limit])


def _choose_pair(rows: Sequence[_Row]) -> tuple[str, str]:
    """The two models that co-occur in the most rows; cheap = lower pass rate on those rows."""
    co: Counter[tuple[str, str]] = Counter()
    for row in rows:
        names = sorted(row.passed)
        co.update(itertools.combinations(names, 2))
    if not co:
        seen = sorted({m for row in rows for m in row.passed})
        raise LogFormatError(
            [], skippable=False,
            headline=f"no row has outcomes for two models (models in the log: {seen}); a router needs a cheap and a strong model",
        )
    best = max(co.values())
    a, b = min(pair for pair, c in co.items() if c == best)
    pa = pb = 0
    sa = sb = 0.0
    for row in rows:
        passed, scores = row.passed, row.scores
        if a in passed and b in passed:
            pa += passed[a]
            pb += passed[b]
            sa += scores[a]
            sb += scores[b]
    # Lower pass rate -> cheap; ties broken by mean score, then by name (deterministic).
    return (a, b) if (pa, sa) <= (pb, sb) else (b, a)


def read_logs(
    paths: Sequence[str | Path],
    *,
    models: tuple[str, str] | None = None,
    options: ReadOptions = ReadOptions(),
) -> LogReadResult:
    """Read and validate labelled logs (formats A and B, mixed freely) for one model pair.

    `models` is (cheap, strong) when the user named them; otherwise the most represented pair
    is chosen (see the module docstring). Raises LogFormatError listing file:line: field: reason
    for every bad row unless `options.skip_invalid`, in which case they are counted in `skipped`.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("no log files given")
    if models is not None:
        if len(models) != 2 or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"models must be (cheap, strong) names, got {models!r}")
        if models[0] == models[1]:
            raise ConfigError(f"the cheap and strong model must differ, got {models[0]!r} twice")
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise LogFormatError(
            [LogProblem(m, 0, None, "no such file", "missing_file") for m in missing], skippable=False
        )

    hasher = hashlib.sha256()
    problems1 = _ProblemLog(options.max_listed)
    file_problems = _ProblemLog(options.max_listed)
    skipped: Counter[str] = Counter()
    rows: list[_Row] = []
    rows_read = 0
    for fidx, path in enumerate(files):
        fname = str(path)
        n_in_file = 0
        for line_no, raw in _iter_lines(path, hasher):
            if not raw.strip():
                continue  # blank lines are formatting, not rows
            rows_read += 1
            n_in_file += 1
            try:
                obj = _line(functools.partial(decode_object, first_line=line_no == 1), raw)
                if obj is None:  # whitespace-only after decoding (e.g. a lone BOM)
                    rows_read -= 1
                    n_in_file -= 1
                    continue
                default_id = f"{path.stem}:{line_no}"
                if "outcomes" in obj:
                    parsed = _parse_format_a(obj, options.pass_threshold, default_id)
                elif "models" in obj:
                    parsed = _parse_format_b(obj, options.pass_threshold, default_id)
                else:
                    # Report a missing request first: a row with neither is not a request at all.
                    _request_of(obj)
                    raise _RowError(
                        "missing_outcomes", "outcomes",
                        'missing; it must map each model name to {"passed": bool} or {"score": number in [0,1]}',
                    )
            except _RowError as e:
                problems1.add((fidx, line_no), LogProblem(fname, line_no, e.field, e.reason, e.category))
                skipped[e.category] += 1
                continue
            parsed.fidx, parsed.file, parsed.line_no = fidx, fname, line_no
            rows.append(parsed)
        if n_in_file == 0:
            file_problems.add((fidx, 0), LogProblem(fname, 0, None, "the file has no rows (empty log)", "empty_file"))

    present = sorted({m for r in rows for m in r.passed})
    if models is None:
        cheap, strong = _choose_pair(rows) if rows else ("", "")
    else:
        cheap, strong = models
        absent = [m for m in (cheap, strong) if m not in present]
        if absent and rows:
            raise LogFormatError(
                [], skippable=False,
                headline=f"model(s) {absent} never occur in the log; the log has outcomes for: {present}",
            )

    problems2 = _ProblemLog(options.max_listed)
    records: list[LabelledRecord] = []
    for row in rows:
        lacking = [m for m in (cheap, strong) if m not in row.passed]
        if lacking and options.require_pair:
            problems2.add((row.fidx, row.line_no), LogProblem(
                row.file, row.line_no, f"{row.fmt}.{lacking[0]}",
                f"no outcome for {' and '.join(repr(m) for m in lacking)} (row has: {sorted(row.passed)})",
                "missing_model",
            ))
            skipped["missing_model"] += 1
            continue
        rec = LabelledRecord(
            id=row.id, request=row.request, tags=row.tags,
            passed=MappingProxyType(row.passed), scores=MappingProxyType(row.scores),
            category=row.category, input_tokens=row.input_tokens, output_tokens=row.output_tokens,
            source_file=row.file, line_no=row.line_no,
        )
        rec.__dict__["_parsed"] = _Parsed(row.classifier_text, row.full_text)  # already parsed once
        records.append(rec)
    del rows

    total = problems1.total + problems2.total + file_problems.total
    listed = _merge(options.max_listed, file_problems, problems1, problems2)
    if total and not options.skip_invalid:
        raise LogFormatError(listed, total=total)
    if not records:
        raise LogFormatError(
            listed, total=total, skippable=False,
            headline=f"no usable rows in {len(files)} file(s) ({rows_read} rows read, all invalid or empty):",
        )
    assert rows_read == len(records) + sum(skipped.values())
    return LogReadResult(
        records=tuple(records), cheap_model=cheap, strong_model=strong,
        rows_read=rows_read, rows_used=len(records),
        skipped=MappingProxyType(dict(skipped)), problems=listed,
        data_sha256=hasher.hexdigest(), files=tuple(str(p) for p in files),
    )
