"""The one reader of labelled request logs.

Each line is validated by the row format (`router_model.offline.row`: team format A and the
public format B, detected per line); this module reads whole files into one validated
`LogReadResult` for a model pair.

Bad rows are never dropped silently: by default every problem in every file is collected and
raised together as one ``LogFormatError``; with ``ReadOptions(skip_invalid=True)`` the rows are
skipped and counted per reason, so ``rows_read == rows_used + sum(skipped.values())``.

Which pair of models is routed between: the caller names ``(cheap, strong)``, or the reader
picks the two models that co-occur in the most rows and calls *cheap* the one with the LOWER
pass rate on the rows that have both (the cheap model is the weaker one; a router that sends
requests to the better model "to save money" would be pointless).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router_model.errors import ConfigError, RouterError
from router_model.offline.row import LabelledRecord, ParsedRow, RowError, parse_line

__all__ = [
    "LogFormatError",
    "LogProblem",
    "LogReadResult",
    "ReadOptions",
    "read_logs",
]


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


def _choose_pair(rows: Sequence[ParsedRow]) -> tuple[str, str]:
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
    rows: list[ParsedRow] = []
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
                parsed = parse_line(
                    raw, line_no=line_no, default_id=f"{path.stem}:{line_no}", pass_threshold=options.pass_threshold
                )
            except RowError as e:
                problems1.add((fidx, line_no), LogProblem(fname, line_no, e.field, e.reason, e.category))
                skipped[e.category] += 1
                continue
            if parsed is None:  # whitespace-only after decoding (e.g. a lone BOM)
                rows_read -= 1
                n_in_file -= 1
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
        records.append(row.record())
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
