"""Observation-mode decision log: what the router *would* have done, one JSON object per line.

Before the router is trusted to switch models, the service runs it in observation mode and
appends each decision here. `report` then answers the questions a rollout needs: how much
traffic would go cheap, how sure the classifier is, which rules fire, and what it would save.

Line format (UTC ISO-8601 timestamps; `prompt` only when prompt logging was asked for):
  {"ts": "2026-11-26T07:30:00.123Z", "request_id": "...", "prompt_sha256": "<hex>",
   "prompt_tokens": 412, "model": "gpt-4o-mini", "cheap_model": "gpt-4o-mini",
   "strong_model": "gpt-4o", "p_cheap_ok": 0.91, "confidence": 0.91, "reason": "classifier",
   "threshold": 0.5, "artifact_version": "...", "prompt": "..."}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from router_model.cli_args import non_negative_number
from router_model.cost import DAYS_PER_MONTH, PriceTable, monthly_cost
from router_model.errors import ConfigError, RouterError

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_TOKENS = 250
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "ts": (str,),
    "prompt_tokens": (int,),
    "model": (str,),
    "cheap_model": (str,),
    "strong_model": (str,),
    "reason": (str,),
}
_SECONDS_PER_MONTH = DAYS_PER_MONTH * 86_400
_SHORT_WINDOW_S = 7 * 86_400


class DecisionLogError(RouterError, ValueError):
    """A decision log is unreadable or a line is malformed: `path` and `line` (1-based) say where."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}" if path and line else (path or (f"line {line}" if line else ""))
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line
        self.reason = message


def utc_timestamp(when: datetime | None = None) -> str:
    """`when` (default now) as UTC ISO-8601 with milliseconds and a Z, the log's `ts` format."""
    when = datetime.now(timezone.utc) if when is None else when.astimezone(timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(ts: str) -> datetime:
    """Parse a log `ts` (Z or offset; naive means UTC) into an aware datetime."""
    text = ts.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the prompt's UTF-8 bytes: joins log lines to prompts without storing them."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def decision_record(
    decision: Any,
    *,
    request_id: str,
    prompt: str,
    cheap_model: str,
    strong_model: str,
    ts: str | None = None,
) -> dict[str, Any]:
    """One log record from a RoutingDecision (or its dict) and the request it was made for.

    The record carries the prompt; DecisionLogWriter drops it unless prompt logging is on, so
    the caller never has to decide twice.
    """
    fields = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
    return {
        "ts": ts or utc_timestamp(),
        "request_id": request_id,
        "prompt_sha256": prompt_sha256(prompt),
        "prompt_tokens": fields["prompt_tokens"],
        "model": fields["model"],
        "cheap_model": cheap_model,
        "strong_model": strong_model,
        "p_cheap_ok": fields["p_cheap_ok"],
        "confidence": fields["confidence"],
        "reason": fields["reason"],
        "threshold": fields["threshold"],
        "artifact_version": fields["artifact_version"],
        "prompt": prompt,
    }


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars (a float32 probability, an int64 count)
        return value.item()
    return str(value)


class DecisionLogWriter:
    """Thread-safe JSON-lines appender that never raises into the request path.

    Each record is serialised outside the lock and appended with a single unbuffered write
    under it, so a line reaches the file as soon as `write` returns (what line buffering is
    for) and concurrent writers never interleave. A failed write (full disk, closed file,
    unserialisable value) is counted in `errors` and warned about once; the request goes on.
    A partially written line is fenced off by a newline before the next record, so one bad
    line never corrupts the next.
    """

    def __init__(self, path: str | Path, *, include_prompt: bool = False) -> None:
        self.path = Path(path)
        self.include_prompt = include_prompt
        self.errors = 0
        self.written = 0
        self._lock = threading.Lock()
        self._warned = False
        self._fence = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: Any = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:  # at start-up, not in the request path: fail loudly
            raise DecisionLogError(f"cannot open the decision log for appending: {exc}", path=str(path)) from None
        # A previous run may have died mid-line; start on a fresh line so ours stay readable.
        try:
            if self._file.tell() > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    self._fence = f.read(1) != b"\n"
        except OSError:
            self._fence = True

    def write(self, decision: Mapping[str, Any]) -> bool:
        """Append one record; True when it was written. Adds `ts` and `prompt_sha256` if absent."""
        try:
            record = dict(decision)
            record.setdefault("ts", utc_timestamp())
            prompt = record.get("prompt")
            if isinstance(prompt, str):
                record.setdefault("prompt_sha256", prompt_sha256(prompt))
            if not self.include_prompt:
                record.pop("prompt", None)
            line = (json.dumps(record, default=_json_default, allow_nan=False) + "\n").encode("utf-8")
        except Exception as exc:  # noqa: BLE001 - a log must not fail a request
            with self._lock:
                self._failed(exc)
            return False
        with self._lock:
            try:
                if self._fence:
                    line = b"\n" + line
                    self._fence = False
                view = memoryview(line)
                while view:
                    n = self._file.write(view)
                    if not n:
                        raise OSError("no bytes written")
                    view = view[n:]
                self.written += 1
                return True
            except Exception as exc:  # noqa: BLE001 - full disk, closed file, ...
                self._fence = True
                self._failed(exc)
                return False

    def _failed(self, exc: BaseException) -> None:
        """Count a failure (caller holds the lock) and warn the first time only."""
        self.errors += 1
        if not self._warned:
            self._warned = True
            log.warning("decision log %s: write failed (%s); further failures are only counted", self.path, exc)

    def close(self) -> None:
        """Close the file; later writes are counted as errors. Safe to call twice."""
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)

    @property
    def closed(self) -> bool:
        return bool(self._file.closed)

    def __enter__(self) -> DecisionLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def record_problem(record: Any) -> str | None:
    """Why `record` is not a usable decision record, or None when it is."""
    if not isinstance(record, Mapping):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, types in REQUIRED_FIELDS.items():
        if key not in record:
            return f"missing field {key!r}"
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"field {key!r} should be {types[0].__name__}, got {value!r}"
    if record["prompt_tokens"] < 0:
        return f"field 'prompt_tokens' is negative: {record['prompt_tokens']}"
    p = record.get("p_cheap_ok")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
        return f"field 'p_cheap_ok' should be a probability or null, got {p!r}"
    try:
        parse_timestamp(record["ts"])
    except ValueError:
        return f"field 'ts' is not an ISO-8601 timestamp: {record['ts']!r}"
    return None


def read_decision_log(
    path: str | Path,
    *,
    skip_malformed: bool = False,
    skipped: list[DecisionLogError] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the records of a decision log; blank lines are ignored.

    A malformed line raises DecisionLogError naming the file and line number, unless
    `skip_malformed`, in which case it is skipped (and appended to `skipped` if given) —
    useful for a log whose writer died mid-line.
    """
    label = str(path)
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DecisionLogError(f"cannot read the decision log: {exc}", path=label) from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                problem = record_problem(record)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
            if problem is None:
                yield record
                continue
            error = DecisionLogError(problem, path=label, line=lineno)
            if not skip_malformed:
                raise error
            if skipped is not None:
                skipped.append(error)


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class ObservationReport:
    """What an observation-mode log says the router would do, and what it would cost.

    Cost fields are None when no volume is known (a log with a single timestamp and no
    `requests_per_month`). `assumptions` lists every figure that is not read from the log.
    """

    n_records: int
    first_ts: str
    last_ts: str
    span_seconds: float
    cheap_model: str
    strong_model: str
    cheap_calls: int
    cheap_share: float
    by_reason: dict[str, int]
    by_model: dict[str, int]
    by_artifact_version: dict[str, int]
    thresholds: dict[str, int]
    p_count: int
    p_null: int
    p_mean: float | None
    p_deciles: tuple[float, ...]  # 0%, 10%, ..., 100% quantiles of p_cheap_ok (11 values)
    p_histogram: tuple[int, ...]  # 10 equal bins over [0, 1]; the last includes 1.0
    mean_prompt_tokens: float
    requests_per_month: float | None
    volume_source: str
    input_tokens_cheap: float
    input_tokens_strong: float
    output_tokens: float
    monthly_cost_strong: float | None
    monthly_cost_cheap: float | None
    monthly_cost_routed: float | None
    savings: float | None
    savings_fraction: float | None
    prices_as_of: str
    assumptions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("p_deciles", "p_histogram", "assumptions"):
            out[key] = list(out[key])
        return out


def build_report(
    records: Iterable[Mapping[str, Any]],
    *,
    prices: PriceTable,
    requests_per_month: float | None = None,
    output_tokens: float = DEFAULT_OUTPUT_TOKENS,
    input_tokens: float | None = None,
) -> ObservationReport:
    """Summarise decision records and project monthly cost with and without routing.

    Volume is `requests_per_month`, or else the log's own rate ((n-1) / time between the first
    and last timestamp) scaled to 30 days. Input tokens are the log's mean prompt_tokens —
    per side (cheap calls, strong calls), because the rules send long prompts to the strong
    model — unless `input_tokens` is given. Output tokens are an assumption the log cannot
    supply. Unpriced model names fall back to gpt-4o-mini / gpt-4o prices, stated in
    `assumptions`. A record counts as cheap when its `model` is its `cheap_model`.
    """
    if requests_per_month is not None and (not math.isfinite(requests_per_month) or requests_per_month < 0):
        raise ConfigError(f"requests_per_month must be a non-negative number, got {requests_per_month!r}")
    if not math.isfinite(output_tokens) or output_tokens < 0:
        raise ConfigError(f"output_tokens must be a non-negative number, got {output_tokens!r}")
    if input_tokens is not None and (not math.isfinite(input_tokens) or input_tokens < 0):
        raise ConfigError(f"input_tokens must be a non-negative number, got {input_tokens!r}")

    n = cheap_calls = 0
    tokens = {True: 0, False: 0}  # prompt tokens summed over cheap (True) / strong (False) calls
    by_reason: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    by_version: Counter[str] = Counter()
    thresholds: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    p_values: list[float] = []
    first: tuple[datetime, str] | None = None
    last: tuple[datetime, str] | None = None
    for i, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            raise DecisionLogError(f"record {i}: {problem}")
        n += 1
        is_cheap = record["model"] == record["cheap_model"]
        cheap_calls += is_cheap
        tokens[is_cheap] += record["prompt_tokens"]
        by_reason[record["reason"]] += 1
        by_model[record["model"]] += 1
        by_version[str(record.get("artifact_version", "?"))] += 1
        threshold = record.get("threshold")
        if threshold is not None:
            thresholds[f"{threshold:g}" if isinstance(threshold, (int, float)) else str(threshold)] += 1
        pairs[(record["cheap_model"], record["strong_model"])] += 1
        if record.get("p_cheap_ok") is not None:
            p_values.append(float(record["p_cheap_ok"]))
        when = parse_timestamp(record["ts"])
        if first is None or when < first[0]:
            first = (when, record["ts"])
        if last is None or when > last[0]:
            last = (when, record["ts"])
    if n == 0 or first is None or last is None:
        raise DecisionLogError("the decision log holds no records")

    assumptions: list[str] = []
    (cheap_model, strong_model), _ = pairs.most_common(1)[0]
    if len(pairs) > 1:
        assumptions.append(
            f"the log holds {len(pairs)} cheap/strong pairs; costs use the most common, {cheap_model}/{strong_model}"
        )
    pair = prices.pricing_for_pair(cheap_model, strong_model, fallback=True)
    assumptions.extend(pair.notes)

    span = (last[0] - first[0]).total_seconds()
    if requests_per_month is not None:
        volume: float | None = float(requests_per_month)
        source = "given"
    elif n >= 2 and span > 0:
        volume = (n - 1) / span * _SECONDS_PER_MONTH
        source = f"log rate over {_duration(span)}, extrapolated to {DAYS_PER_MONTH} days"
        if span < _SHORT_WINDOW_S:
            assumptions.append(
                f"volume extrapolated from {_duration(span)} of log: daily/weekly traffic cycles are not "
                "accounted for; pass requests_per_month for a planned volume"
            )
    else:
        volume, source = None, "unknown (the log spans no time; pass requests_per_month)"

    mean_tokens = (tokens[True] + tokens[False]) / n
    strong_calls = n - cheap_calls
    if input_tokens is not None:
        in_cheap = in_strong = in_all = float(input_tokens)
        assumptions.append(f"input tokens per request: {input_tokens:g} (given)")
    else:
        in_all = mean_tokens
        in_cheap = tokens[True] / cheap_calls if cheap_calls else mean_tokens
        in_strong = tokens[False] / strong_calls if strong_calls else mean_tokens
    assumptions.append(f"output tokens per request: {output_tokens:g} (assumed; the log does not record them)")
    assumptions.append("no cached-input discount")

    share = cheap_calls / n
    costs: dict[str, float | None] = dict.fromkeys(("strong", "cheap", "routed", "savings", "fraction"))
    if volume is not None:
        costs["strong"] = float(monthly_cost(pair.strong, volume, in_all, output_tokens))
        costs["cheap"] = float(monthly_cost(pair.cheap, volume, in_all, output_tokens))
        costs["routed"] = float(
            monthly_cost(pair.cheap, volume * share, in_cheap, output_tokens)
            + monthly_cost(pair.strong, volume * (1 - share), in_strong, output_tokens)
        )
        costs["savings"] = costs["strong"] - costs["routed"]
        costs["fraction"] = costs["savings"] / costs["strong"] if costs["strong"] else 0.0

    arr = np.asarray(p_values, dtype=float)
    deciles = tuple(float(q) for q in np.quantile(arr, np.linspace(0, 1, 11))) if arr.size else ()
    hist = tuple(int(c) for c in np.histogram(arr, bins=10, range=(0.0, 1.0))[0])
    return ObservationReport(
        n_records=n,
        first_ts=first[1],
        last_ts=last[1],
        span_seconds=span,
        cheap_model=cheap_model,
        strong_model=strong_model,
        cheap_calls=cheap_calls,
        cheap_share=share,
        by_reason=dict(by_reason.most_common()),
        by_model=dict(by_model.most_common()),
        by_artifact_version=dict(by_version.most_common()),
        thresholds=dict(thresholds.most_common()),
        p_count=int(arr.size),
        p_null=n - int(arr.size),
        p_mean=float(arr.mean()) if arr.size else None,
        p_deciles=deciles,
        p_histogram=hist,
        mean_prompt_tokens=mean_tokens,
        requests_per_month=volume,
        volume_source=source,
        input_tokens_cheap=in_cheap,
        input_tokens_strong=in_strong,
        output_tokens=float(output_tokens),
        monthly_cost_strong=costs["strong"],
        monthly_cost_cheap=costs["cheap"],
        monthly_cost_routed=costs["routed"],
        savings=costs["savings"],
        savings_fraction=costs["fraction"],
        prices_as_of=prices.as_of,
        assumptions=tuple(assumptions),
    )


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.1f} seconds"


def _counts(title: str, counts: Mapping[str, int], total: int) -> list[str]:
    lines = [f"{title}:"]
    width = max((len(k) for k in counts), default=0)
    lines += [f"  {k:<{width}}  {v:>9,}  {v / total:6.1%}" for k, v in counts.items()]
    return lines


def format_report(report: ObservationReport) -> str:
    """The report as plain text for a terminal or a ticket."""
    r = report
    lines = [
        f"decision log: {r.n_records:,} decisions, {r.first_ts} .. {r.last_ts} ({_duration(r.span_seconds)})",
        f"would go cheap ({r.cheap_model}): {r.cheap_calls:,} of {r.n_records:,} = {r.cheap_share:.1%}",
        "",
        *_counts("by reason", r.by_reason, r.n_records),
        *_counts("by model", r.by_model, r.n_records),
        *_counts("by artifact version", r.by_artifact_version, r.n_records),
    ]
    if r.thresholds:
        lines += _counts("by threshold", r.thresholds, r.n_records)
    lines += ["", f"p_cheap_ok: {r.p_count:,} values, {r.p_null:,} null (rules without classifier text)"]
    if r.p_count:
        lines.append(f"  mean {r.p_mean:.3f}")
        lines.append("  deciles " + "  ".join(f"p{10 * i}={q:.3f}" for i, q in enumerate(r.p_deciles)))
        peak = max(r.p_histogram) or 1
        for i, count in enumerate(r.p_histogram):
            lo, hi = i / 10, (i + 1) / 10
            bar = "#" * round(40 * count / peak)
            lines.append(f"  [{lo:.1f}, {hi:.1f}{']' if i == 9 else ')'} {count:>9,} {bar}")
    lines += ["", f"projected monthly cost (prices as of {r.prices_as_of}):"]
    if r.requests_per_month is None:
        lines.append(f"  volume {r.volume_source}")
    else:
        lines += [
            f"  volume: {r.requests_per_month:,.0f} requests/month ({r.volume_source})",
            f"  input tokens/request: {r.input_tokens_cheap:,.1f} on cheap calls, "
            f"{r.input_tokens_strong:,.1f} on strong calls (mean {r.mean_prompt_tokens:,.1f})",
            f"  always {r.strong_model}: ${r.monthly_cost_strong:,.2f}",
            f"  always {r.cheap_model}: ${r.monthly_cost_cheap:,.2f}",
            f"  routed ({r.cheap_share:.1%} cheap): ${r.monthly_cost_routed:,.2f}",
            f"  savings vs always {r.strong_model}: ${r.savings:,.2f} ({r.savings_fraction:.1%})",
        ]
    lines += ["assumptions:", *(f"  - {a}" for a in r.assumptions)]
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router_model.decision_log",
        description="Read an observation-mode decision log (JSON lines) written by the router service.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "report",
        help="share of calls that would go cheap, p_cheap_ok distribution, rules, projected cost",
        description=(
            "Summarise a decision log and project monthly cost with and without routing. Volume "
            f"defaults to the log's own rate extrapolated to {DAYS_PER_MONTH} days."
        ),
    )
    rep.add_argument("--log", required=True, metavar="FILE", help="the decision log (JSON lines)")
    rep.add_argument(
        "--requests-per-month", type=non_negative_number, default=None, metavar="N",
        help="monthly volume for the cost projection (default: the log's rate x 30 days)",
    )
    rep.add_argument(
        "--output-tokens", type=non_negative_number, default=DEFAULT_OUTPUT_TOKENS, metavar="O",
        help=f"assumed output tokens per request; the log has none (default {DEFAULT_OUTPUT_TOKENS})",
    )
    rep.add_argument(
        "--input-tokens", type=non_negative_number, default=None, metavar="I",
        help="input tokens per request (default: the log's mean prompt_tokens, per side)",
    )
    rep.add_argument("--prices", default=None, metavar="FILE", help="price file overriding/extending the packaged one")
    rep.add_argument("--skip-malformed", action="store_true", help="skip malformed lines instead of stopping")
    rep.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m router_model.decision_log report ...`; exit 2 on a bad option, price file or log."""
    parser = _parser()
    args = parser.parse_args(argv)
    skipped: list[DecisionLogError] = []
    try:
        prices = PriceTable.load(args.prices)
        report = build_report(
            read_decision_log(args.log, skip_malformed=args.skip_malformed, skipped=skipped),
            prices=prices,
            requests_per_month=args.requests_per_month,
            output_tokens=args.output_tokens,
            input_tokens=args.input_tokens,
        )
    except (ConfigError, DecisionLogError) as exc:
        hint = " (use --skip-malformed to skip such lines)" if getattr(exc, "line", None) else ""
        parser.error(f"{exc}{hint}")
    if args.json:
        out = report.to_dict()
        out["skipped_lines"] = [e.line for e in skipped]
        print(json.dumps(out))
    else:
        print(format_report(report))
        if skipped:
            print(f"skipped {len(skipped)} malformed line(s), first: {skipped[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
