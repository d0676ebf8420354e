"""Batch scoring of a JSONL file of requests, streamed in bounded memory.

Each input line is a JSON object with `prompt` (a string) or `messages` (OpenAI chat messages),
optional `id` (string or integer; default `<file stem>:<line>`), optional `tags` (list of strings)
and optional `context_turns` (earlier user turns, as in the normalized public files). Every
other field is ignored, so a labelled training log can be scored as it is. Blank lines are
skipped.

Each output line, in input order: `line` (input line number), `id`, `model`, `p_cheap_ok`,
`confidence`, `margin` (p_cheap_ok - threshold), `reason` (an N-model router adds `p_pass`
{model: P(pass)} and `expected_cost_usd`); with `skip_invalid`, a bad input line gives an output line whose
decision fields are null and whose `error` says `field: reason`.

The file is never held in memory: a chunk of `batch_size` lines is read, routed with
`Router.predict_batch`, written, and dropped before the next chunk is read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from router_model.errors import ConfigError, InvalidRequestError, RouterError
from router_model.jsonl import LineError, decode_object, request_from_line, tags_from_line

DEFAULT_BATCH_SIZE = 256


class InputLineError(RouterError, ValueError):
    """A line of the input file cannot be scored; str() is `FILE:LINE: field: reason`."""

    def __init__(self, file: str, line: int, field: str | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        where = f"{file}:{line}"
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


@dataclass
class ScoreReport:
    """What a scoring run did: lines written, lines that failed, and per-model counts."""

    written: int = 0
    invalid: int = 0
    blank: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def merge(self, other: ScoreReport) -> None:
        """Add another part's counts (a shard, a Ray chunk), keeping the first ten errors."""
        self.written += other.written
        self.invalid += other.invalid
        self.blank += other.blank
        for k, v in other.by_model.items():
            self.by_model[k] = self.by_model.get(k, 0) + v
        for k, v in other.by_reason.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v
        self.first_errors.extend(other.first_errors[: max(0, 10 - len(self.first_errors))])


@dataclass(frozen=True)
class _Item:
    line: int
    id: str
    request: Any
    tags: tuple[str, ...] | None


class _BadLineError(Exception):
    def __init__(self, field: str | None, reason: str, rid: str | None = None) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.rid = rid


def parse_input_line(raw: bytes, line: int, default_id: str) -> _Item | None:
    """One input line -> an item to route; None for a blank line; raises _BadLineError."""
    try:
        obj = decode_object(raw, first_line=line == 1)
    except LineError as e:
        raise _BadLineError("line", e.reason) from None  # the line as a whole
    if obj is None:
        return None
    rid: Any = obj.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise _BadLineError("id", f"expected a non-empty string or an integer, got {rid!r}")
    rid = str(rid)
    try:
        request, _ = request_from_line(obj)
        tags = tags_from_line(obj)
    except LineError as e:
        raise _BadLineError(e.field, e.reason, rid) from None
    return _Item(line, rid, request, tags)


def _read_chunks(fh: IO[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for i, raw in enumerate(fh, start=1):
        chunk.append((i, raw))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decision_row(item: _Item, decision) -> dict[str, Any]:
    row = {
        "line": item.line,
        "id": item.id,
        "model": decision.model,
        "p_cheap_ok": decision.p_cheap_ok,
        "confidence": decision.confidence,
        "margin": decision.margin,
        "reason": decision.reason,
    }
    if getattr(decision, "p_pass", None) is not None:  # an N-model router: every model's P(pass)
        row["p_pass"] = decision.p_pass
    if getattr(decision, "expected_cost_usd", None) is not None:
        row["expected_cost_usd"] = decision.expected_cost_usd
    return row


def _error_row(line: int, rid: str, message: str) -> dict[str, Any]:
    return {"line": line, "id": rid, "model": None, "p_cheap_ok": None, "confidence": None, "margin": None,
            "reason": None, "error": message}


def _route(router, items: list[_Item]) -> list[Any]:
    """Decisions for the items; an item the router refuses gets its InvalidRequestError instead."""
    out: list[Any] = [None] * len(items)
    todo = list(range(len(items)))
    while todo:
        try:
            decisions = router.predict_batch([items[i].request for i in todo], tags=[items[i].tags for i in todo])
        except InvalidRequestError as e:
            if e.index is None:
                raise
            # That item is refused (e.g. image-only with the image rule off): record it, route the rest.
            bad = todo.pop(e.index)
            out[bad] = InvalidRequestError(e.reason, field=e.field)
            continue
        for i, d in zip(todo, decisions):
            out[i] = d
        break
    return out


def score_chunk(router, chunk: list[tuple[int, bytes]], report: ScoreReport, *, name: str, default_id_prefix: str,
                skip_invalid: bool = False) -> list[str]:
    """The output lines of one chunk of (line number, raw line); counts into `report`.

    One owner of what a line becomes, shared by `score_stream` and the Ray path
    (router_model/score_ray.py), so both write the same bytes.
    """
    rows: list[dict[str, Any] | _Item] = []
    for line, raw in chunk:
        try:
            item = parse_input_line(raw, line, f"{default_id_prefix}:{line}")
        except _BadLineError as p:
            err = InputLineError(name, line, p.field, p.reason)
            if not skip_invalid:
                raise err from None
            report.invalid += 1
            if len(report.first_errors) < 10:
                report.first_errors.append(str(err))
            msg = f"{p.field}: {p.reason}" if p.field else p.reason
            rows.append(_error_row(line, p.rid or f"{default_id_prefix}:{line}", msg))
            continue
        if item is None:
            report.blank += 1
            continue
        rows.append(item)
    items = [r for r in rows if isinstance(r, _Item)]
    decisions = dict(zip((it.line for it in items), _route(router, items)))
    out_lines: list[str] = []
    for r in rows:
        if isinstance(r, _Item):
            d = decisions[r.line]
            if isinstance(d, InvalidRequestError):
                err = InputLineError(name, r.line, d.field, d.reason)
                if not skip_invalid:
                    raise err from None
                report.invalid += 1
                if len(report.first_errors) < 10:
                    report.first_errors.append(str(err))
                row = _error_row(r.line, r.id, f"{d.field}: {d.reason}" if d.field else d.reason)
            else:
                row = _decision_row(r, d)
                report.by_model[d.model] = report.by_model.get(d.model, 0) + 1
                report.by_reason[d.reason] = report.by_reason.get(d.reason, 0) + 1
        else:
            row = r
        out_lines.append(json.dumps(row, ensure_ascii=False))
    return out_lines


def score_stream(
    router,
    fin: IO[bytes],
    fout: IO[str],
    *,
    name: str,
    default_id_prefix: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_invalid: bool = False,
    progress=None,
) -> ScoreReport:
    """Route every line of `fin` into `fout` chunk by chunk; raises InputLineError when not skipping."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = ScoreReport()
    for chunk in _read_chunks(fin, batch_size):
        out_lines = score_chunk(router, chunk, report, name=name, default_id_prefix=default_id_prefix,
                                skip_invalid=skip_invalid)
        if out_lines:
            fout.write("\n".join(out_lines) + "\n")
        report.written += len(out_lines)
        if progress is not None:
            progress(sum(len(raw) for _, raw in chunk))
    return report


def score_file(
    router,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_invalid: bool = False,
    show_progress: bool = True,
) -> ScoreReport:
    """Score `input_path` (or '-' for stdin) into `output_path` (or '-' for stdout).

    A file output is written beside the target and renamed into place on success, so a run that
    stops at a bad line leaves no half-written output behind.
    """
    in_name = str(input_path)
    stdin = in_name == "-"
    stdout = str(output_path) == "-"
    total = None
    if not stdin:
        p = Path(input_path)
        if not p.is_file():
            raise FileNotFoundError(f"input file not found: {p}")
        total = p.stat().st_size
    prefix = "stdin" if stdin else Path(in_name).stem
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="scoring", unit="B", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    fin = sys.stdin.buffer if stdin else open(in_name, "rb")  # noqa: SIM115 - closed in the finally below
    tmp: Path | None = None
    try:
        if stdout:
            fout = sys.stdout
        else:
            out = Path(output_path)
            if out.parent and not out.parent.exists():
                raise FileNotFoundError(f"output folder does not exist: {out.parent}")
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            fout = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
        try:
            report = score_stream(
                router,
                fin,
                fout,
                name=in_name,
                default_id_prefix=prefix,
                batch_size=batch_size,
                skip_invalid=skip_invalid,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if not stdout:
                fout.close()
        if tmp is not None:
            tmp.replace(Path(output_path))
            tmp = None
        else:
            fout.flush()
        return report
    finally:
        if bar is not None:
            bar.close()
        if not stdin:
            fin.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def shard_pairs(input_path: str | Path, output_path: str | Path) -> list[tuple[Path, Path]]:
    """(input, output) per file: a file to a file, or each `*.jsonl` of a directory (by name) to the same name in a directory."""
    src, dst = Path(input_path), Path(output_path)
    if not src.is_dir():
        if not src.is_file():
            raise FileNotFoundError(f"input file not found: {src}")
        if dst.is_dir():
            raise ConfigError(f"--output {dst} is a directory; a file input is scored into a file")
        if not dst.parent.exists():
            raise FileNotFoundError(f"output folder does not exist: {dst.parent}")
        return [(src, dst)]
    shards = sorted(p for p in src.glob("*.jsonl") if p.is_file())
    if not shards:
        raise FileNotFoundError(f"no *.jsonl shards in the input directory {src}")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"--output {dst} is a file; a directory of shards is scored into a directory")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"--output {dst} is the input directory; the decisions would replace the requests")
    dst.mkdir(parents=True, exist_ok=True)
    return [(p, dst / p.name) for p in shards]


def summarize(report: ScoreReport) -> str:
    models = ", ".join(f"{m}: {n}" for m, n in sorted(report.by_model.items())) or "none"
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(report.by_reason.items())) or "none"
    return (
        f"scored {report.written - report.invalid} request(s), {report.invalid} invalid line(s) skipped; "
        f"models: {models}; reasons: {reasons}"
    )
