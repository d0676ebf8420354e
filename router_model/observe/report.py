"""The observation report: what a decision log says the router would do, and what it would cost.

Split from the log itself so that the request path (the writer) never imports the cost model or
numpy's statistics, and the report can grow without touching the line format.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, TOKENS_PER_UNIT, PriceTable
from router_model.cost_projection import DAYS_PER_MONTH, monthly_cost
from router_model.errors import ConfigError
from router_model.observe.decision_log import DecisionLogError, parse_timestamp, record_problem

_SECONDS_PER_MONTH = DAYS_PER_MONTH * 86_400
_SHORT_WINDOW_S = 7 * 86_400

@dataclass(frozen=True)
class ColdCacheEstimate:
    """How much of the would-be savings a model switch would lose to cold prompt caches.

    Read from observe-mode gateway records with `usage`: a turn the router would send to another
    model than the one that answered (`model` != `served_model`) while the answering model read
    `cached_tokens` of its prompt from the provider's cache. Assumed: the other model's cache is
    cold for that prompt, so those tokens would be billed at its full input price instead of its
    cached price (`lost_usd`); the logged `saved_usd` prices them at the cached rate, as if warm.
    """

    records: int  # observe-mode records with usage (the base of the estimate)
    switched: int  # of them, turns the router would move to another model
    switched_cached: int  # of those, turns whose answering model read from its prompt cache
    cached_tokens: int  # prompt tokens read from cache on those turns
    saved_usd: float  # the logged would-be savings of these records (cached tokens at the cached rate)
    lost_usd: float  # what cold caches take back on the switched turns
    unpriced: int  # switched, cached turns whose target model has no price (not counted in lost_usd)

    @property
    def lost_fraction(self) -> float | None:
        return self.lost_usd / self.saved_usd if self.saved_usd > 0 else None


def _cached_tokens(usage: Any) -> int:
    value = usage.get("cached_tokens") if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class _CacheTally:
    """Builds a `ColdCacheEstimate` from records, one at a time."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self.records = self.switched = self.switched_cached = self.cached_tokens = self.unpriced = 0
        self.saved = self.lost = 0.0

    def add(self, record: Mapping[str, Any]) -> None:
        if record.get("mode") != "observe" or not isinstance(record.get("usage"), Mapping):
            return
        self.records += 1
        saved = record.get("saved_usd")
        if isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved):
            self.saved += float(saved)
        target, served = record["model"], record.get("served_model")
        if not isinstance(served, str) or target == served:
            return
        self.switched += 1
        cached = _cached_tokens(record["usage"])
        if not cached:
            return
        self.switched_cached += 1
        self.cached_tokens += cached
        if target not in self.prices:
            self.unpriced += 1
            return
        prompt = record["usage"].get("prompt_tokens")
        price = self.prices.price(target).at(prompt if isinstance(prompt, (int, float)) else 0)  # its own tier
        self.lost += cached * (price.input - price.cached_input) / TOKENS_PER_UNIT

    def estimate(self) -> ColdCacheEstimate | None:
        if not self.records:
            return None
        return ColdCacheEstimate(self.records, self.switched, self.switched_cached, self.cached_tokens,
                                 self.saved, self.lost, self.unpriced)


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
    cache: ColdCacheEstimate | None = None  # what a switch would lose to cold prompt caches (gateway records with usage)
    price_sources: dict[str, str] = field(default_factory=dict)  # model -> where its price came from (PriceTable.source_of)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("p_deciles", "p_histogram", "assumptions"):
            out[key] = list(out[key])
        if self.cache is not None:
            out["cache"]["lost_fraction"] = self.cache.lost_fraction
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
    cache = _CacheTally(prices)
    cached_input = billed_input = 0  # prompt tokens read from a provider's cache / all, where usage is logged
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
        cache.add(record)
        usage = record.get("usage")
        if isinstance(usage, Mapping) and isinstance(usage.get("prompt_tokens"), int):
            billed_input += usage["prompt_tokens"]
            cached_input += min(_cached_tokens(usage), usage["prompt_tokens"])
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
    # An unpriced model is refused by name (UnknownModelError says how to map it with --price-as).
    pair = prices.pricing_for_pair(cheap_model, strong_model)
    for name in (cheap_model, strong_model):
        if prices.resolve(name) != name.strip().lower():
            assumptions.append(f"{name} priced as {prices.resolve(name)}")

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
    cached_share = cached_input / billed_input if billed_input else 0.0
    if billed_input:
        assumptions.append(f"cached input: {cached_share:.1%} of input tokens billed at the cached-input price "
                           "(the share the upstreams' usage reported)")
    else:
        assumptions.append("no cached-input discount (the log records no upstream usage)")
    estimate = cache.estimate()
    if estimate is not None:
        assumptions.append(
            "cold caches: a turn the router would move to the other model finds that model's prompt cache cold, "
            "so the tokens the answering model read from its cache cost the full input price there (an upper bound: "
            "later turns of a conversation already moved are charged again, and a prefix many conversations share "
            "would soon be cached on the new model too; a cache write's surcharge is not counted)"
        )

    share = cheap_calls / n
    costs: dict[str, float | None] = dict.fromkeys(("strong", "cheap", "routed", "savings", "fraction"))
    if volume is not None:
        strong = float(monthly_cost(pair.strong, volume, in_all, output_tokens, cached_share))
        routed = float(
            monthly_cost(pair.cheap, volume * share, in_cheap, output_tokens, cached_share)
            + monthly_cost(pair.strong, volume * (1 - share), in_strong, output_tokens, cached_share)
        )
        costs["strong"] = strong
        costs["cheap"] = float(monthly_cost(pair.cheap, volume, in_all, output_tokens, cached_share))
        costs["routed"] = routed
        costs["savings"] = strong - routed
        costs["fraction"] = (strong - routed) / strong if strong else 0.0

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
        cache=estimate,
        price_sources={m: prices.source_of(m) for m in (strong_model, cheap_model)},
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
    lines += [f"  price of {m}: {source}" for m, source in r.price_sources.items()]
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
    c = r.cache
    if c is not None:
        lines += ["", f"prompt caches (observe-mode records with usage: {c.records:,}):",
                  f"  would switch model: {c.switched:,} turns, {c.switched_cached:,} of them with cached input "
                  f"({c.cached_tokens:,} tokens read from the answering model's cache)",
                  f"  would-be savings logged: ${c.saved_usd:,.4f}; lost to cold caches on the switched turns: "
                  f"${c.lost_usd:,.4f}" + (f" ({c.lost_fraction:.1%} of the savings)" if c.lost_fraction is not None else "")]
        if r.savings is not None and c.lost_fraction is not None:
            lines.append(f"  monthly savings after cold caches: about ${r.savings * (1 - c.lost_fraction):,.2f}")
        if c.unpriced:
            lines.append(f"  {c.unpriced:,} switched turns with cached input go to an unpriced model (not counted)")
    lines += ["assumptions:", *(f"  - {a}" for a in r.assumptions)]
    return "\n".join(lines)
