"""What a trained router saves on a labelled log, in the user's dollars (`router-cost savings`).

For the router's own threshold and across strong-call shares (0%, 10%, ..., 100%), the report
gives the cheap share, the pass rate, quality relative to always-strong, the monthly cost at the
user's volume and the dollars saved against always-strong (and the extra spent against
always-cheap), beside random and oracle routing at the same shares. This module computes it
(`score_log`, `compute_report`); `router_model.offline.savings_cli` prints it as a table (or one
JSON object with ``--json``) and can draw the cost-quality plane as a PNG.

Conventions (as in shared/notes/METRICS.md and router_model.offline.metrics):

* The router's score is p_cheap_ok from the classifier only (``Router.p_cheap_ok``); the rules
  (images, tags, very long contexts) are not applied to the figures, but how many rows they would
  send to the strong model is reported from ``Router.predict_batch`` reasons.
* At a strong share x the top x*n rows by 1 - p_cheap_ok go to the strong model; ties are scored
  as the expectation over random tie-breaking (so a constant score is exactly random routing,
  and the oracle, score s - w, is in expectation over its large tie blocks).
* Quality is the pass rate (a row's outcome passed or not), so "quality" and "pass rate" are the
  same number; quality_vs_strong divides by always-strong's pass rate.
* Per-request dollars come from ``router_model.offline.costs.request_costs`` (the log's token
  counts, or the documented estimate: ceil(chars / 4) input tokens and ``--output-tokens`` output
  tokens); monthly figures are mean cost per request x requests per month.

A log the router was trained on overstates its quality: evaluate on held-out rows.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_model.answer_score import ASSUMED_FIRST_TOKEN_S, ASSUMED_TOKENS_PER_S, estimated_wait_s
from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.decision import REASON_CLASSIFIER
from router_model.offline.costs import request_costs
from router_model.offline.log import LogFormatError, ReadOptions, read_logs
from router_model.offline.metrics import expected_at_shares
from router_model.request import has_text
from router_model.router import Router

__all__ = [
    "DEFAULT_REQUESTS_PER_MONTH",
    "DEFAULT_SHARES",
    "HELD_OUT_NOTE",
    "LabelledScores",
    "compute_report",
    "score_log",
]

DEFAULT_REQUESTS_PER_MONTH = 1_000_000
DEFAULT_SHARES = tuple(round(i / 10, 1) for i in range(11))
HELD_OUT_NOTE = (
    "Quality measured on rows the router was trained on overstates it: use held-out rows "
    "(router-train writes its test split to DIR-report/test.jsonl), or requests logged after training."
)


@dataclass
class LabelledScores:
    """Everything the report needs, one entry per log row (arrays aligned)."""

    p: np.ndarray  # classifier p_cheap_ok
    cheap_passed: np.ndarray  # cheap model passed (0/1)
    strong_passed: np.ndarray  # strong model passed (0/1)
    cost_cheap: np.ndarray  # dollars per request on the cheap model
    cost_strong: np.ndarray
    input_tokens: np.ndarray  # the token counts the costs were computed from
    output_tokens: np.ndarray
    threshold: float
    cheap_model: str
    strong_model: str
    rule_reasons: dict[str, int]  # rows the rules would send to strong, per reason
    info: dict[str, Any]  # provenance: files, rows, router version, pricing notes, ...
    # The router escalates on its answer score (format 3) and the log kept every cheap answer:
    # each row's score and the certified threshold (None: no escalation in the figures).
    answer_scores: np.ndarray | None = None
    answer_threshold: float | None = None
    answer_tokens: np.ndarray | None = None  # the cheap answers' length in tokens (characters / 4)

    def served(self) -> tuple[np.ndarray, np.ndarray]:
        """(routed strong, escalated): the router's decision p < threshold, and the cheap answers its
        answer score replaces with the strong one (both calls paid; none without escalation)."""
        strong_first = self.p < self.threshold
        escalated = np.zeros(len(self.p), dtype=bool)
        if self.answer_scores is not None and self.answer_threshold is not None:
            escalated = ~strong_first & (self.answer_scores >= self.answer_threshold)
        return strong_first, escalated


# ------------------------------------------------------------------------------ arithmetic


def _point(name_share: float, quality: float, cost_per_request: float, *, base: dict[str, float],
           volume: float) -> dict[str, float]:
    monthly = cost_per_request * volume
    return {
        "strong_share": float(name_share),
        "cheap_share": float(1.0 - name_share),
        "pass_rate": float(quality),
        "quality_vs_strong": float(quality / base["q_strong"]),
        "cost_per_request": float(cost_per_request),
        "monthly_cost": float(monthly),
        "saved_vs_strong": float(base["strong_monthly"] - monthly),
        "saved_fraction": float((base["strong_monthly"] - monthly) / base["strong_monthly"]) if base["strong_monthly"] else 0.0,
        "extra_vs_cheap": float(monthly - base["cheap_monthly"]),
    }


def compute_report(
    sc: LabelledScores,
    *,
    requests_per_month: float = DEFAULT_REQUESTS_PER_MONTH,
    shares: Sequence[float] = DEFAULT_SHARES,
) -> dict[str, Any]:
    """The savings report as a JSON-ready dict (see the module docstring for conventions).

    Random routing is reported in expectation (no seed): at strong share x its quality and cost
    lie on the straight line from always-cheap to always-strong.
    """
    if not (math.isfinite(requests_per_month) and requests_per_month >= 0):
        raise ValueError(f"requests_per_month must be a finite non-negative number, got {requests_per_month!r}")
    # Short names for the arithmetic below: w / s the cheap ("weak") / strong outcomes, cc / cs their costs.
    w, s, cc, cs, p = sc.cheap_passed, sc.strong_passed, sc.cost_cheap, sc.cost_strong, sc.p
    n = len(p)
    q_weak, q_strong = float(w.mean()), float(s.mean())
    if q_strong <= 0:
        raise ValueError("the strong model passes no row of this log: quality relative to always-strong is undefined")
    V = float(requests_per_month)
    base = {"q_strong": q_strong, "strong_monthly": float(cs.mean()) * V, "cheap_monthly": float(cc.mean()) * V}

    scores = {"router": 1.0 - p, "random": np.zeros(n), "oracle": s - w}
    strong_chosen, escalated = sc.served()
    chosen_share = float(strong_chosen.mean())
    grid_shares = sorted(set(float(x) for x in shares) | {chosen_share})

    def at(name: str, xs: Sequence[float]) -> list[dict[str, float]]:
        q, c = expected_at_shares(scores[name], w, s, cost_cheap=cc, cost_strong=cs, shares=xs)
        return [_point(x, qi, ci, base=base, volume=V) for x, qi, ci in zip(xs, q, c)]

    # The router at its own threshold: the exact decision p < threshold (no tie expectation); with
    # escalation, a cheap answer scored at or above the answer threshold is replaced by the strong one
    # (both calls paid).
    kept_cheap = ~strong_chosen & ~escalated
    q_ch = float(np.where(kept_cheap, w, s).mean())
    c_ch = float((np.where(strong_chosen, 0.0, cc) + np.where(kept_cheap, 0.0, cs)).mean())
    chosen: dict[str, Any] = {
        "threshold": float(sc.threshold),
        "router": _point(chosen_share, q_ch, c_ch, base=base, volume=V),
        "random": at("random", [chosen_share])[0],
        "oracle": at("oracle", [chosen_share])[0],
    }
    if sc.answer_threshold is not None:
        tokens = sc.answer_tokens if sc.answer_tokens is not None else sc.output_tokens
        wait = estimated_wait_s(tokens[escalated])
        chosen["escalation"] = {
            "answer_threshold": float(sc.answer_threshold),
            "escalated_share": float(escalated.mean()),
            "added_wait_p50_s": float(np.percentile(wait, 50)) if len(wait) else 0.0,
            "added_wait_p99_s": float(np.percentile(wait, 99)) if len(wait) else 0.0,
            "wait_assumption": f"{ASSUMED_FIRST_TOKEN_S:g} s to the first token + "
                               f"{'the answer (characters / 4)' if sc.answer_tokens is not None else 'output'} tokens "
                               f"at {ASSUMED_TOKENS_PER_S:g}/s; estimated, the log holds no latencies",
        }
    grid = []
    rows = {name: at(name, grid_shares) for name in scores}
    for i, x in enumerate(grid_shares):
        grid.append({
            "strong_share": x,
            "cheap_share": 1.0 - x,
            "chosen": bool(x == chosen_share),
            **{name: rows[name][i] for name in scores},
        })

    always_strong = _point(1.0, q_strong, float(cs.mean()), base=base, volume=V)
    always_cheap = _point(0.0, q_weak, float(cc.mean()), base=base, volume=V)
    rules_total = int(sum(sc.rule_reasons.values()))
    extra = list(sc.info.get("notes", []))
    warnings = [n for n in extra if n.startswith("WARNING")]
    # Said only when this log overlaps the router's training data (checked, not assumed).
    held_out = [HELD_OUT_NOTE] if sc.info.get("trained_on_this_log") else []
    notes = [*warnings, *held_out, *(n for n in extra if n not in warnings)]
    return {
        **{k: v for k, v in sc.info.items() if k != "notes"},
        "n": int(n),
        "cheap_model": sc.cheap_model,
        "strong_model": sc.strong_model,
        "requests_per_month": V,
        "mean_input_tokens": float(np.mean(sc.input_tokens)),
        "mean_output_tokens": float(np.mean(sc.output_tokens)),
        "always_strong": always_strong,
        "always_cheap": always_cheap,
        "chosen": chosen,
        "grid": grid,
        "rules": {
            "strong_rows": rules_total,
            "strong_share": rules_total / n,
            "by_reason": dict(sorted(sc.rule_reasons.items())),
            "applied_to_figures": False,
        },
        "notes": notes,
    }


# ------------------------------------------------------------------------------ scoring a log


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def score_log(
    model_dir: str | Path,
    logs: Sequence[str | Path],
    *,
    cheap: str | None = None,
    strong: str | None = None,
    prices: str | Path | None = None,
    price_as: Mapping[str, str] | None = None,
    output_tokens: int | None = None,
    skip_invalid: bool = False,
    threads: int | None = None,
) -> LabelledScores:
    """Read the labelled log(s), score every row with the router and cost it on both models."""
    if (cheap is None) != (strong is None):
        raise ValueError("name both --cheap and --strong, or neither (the router's pair is used)")
    router = Router.load(model_dir, threads=threads or os.cpu_count() or 1)
    data = router.meta.data
    notes: list[str] = []
    options = ReadOptions(pass_threshold=data.pass_threshold if data else 0.8, skip_invalid=skip_invalid)
    models = (cheap, strong) if cheap is not None and strong is not None else (router.cheap_model, router.strong_model)
    try:
        read = read_logs(list(logs), models=models, options=options)
    except LogFormatError as e:
        if cheap is not None or e.problems or "never occur" not in str(e):
            raise
        # The log names its models differently from the router's training data: let the reader
        # pick the log's most represented pair and say so.
        read = read_logs(list(logs), models=None, options=options)
        notes.append(
            f"the router's pair ({router.cheap_model} / {router.strong_model}) is not in the log; "
            f"using the log's pair {read.cheap_model} / {read.strong_model} (name it with --cheap/--strong)"
        )
    records = read.records
    requests = [r.request for r in records]
    tags = [list(r.tags) for r in records]

    # Rules need predict_batch; it also yields p_cheap_ok for every row no rule decided, so only
    # the rule-decided rows are scored again with the classifier.
    decisions = router.predict_batch(requests, tags=tags)
    p = np.array([d.p_cheap_ok if d.p_cheap_ok is not None else np.nan for d in decisions], dtype=float)
    reasons = Counter(d.reason for d in decisions if d.reason != REASON_CLASSIFIER)
    todo = [i for i, d in enumerate(decisions) if d.p_cheap_ok is None and has_text(records[i].classifier_text)]
    if todo:
        p[todo] = router.p_cheap_ok([requests[i] for i in todo])
    no_text = np.isnan(p)
    if no_text.any():
        p[no_text] = 0.0  # nothing for the classifier to read (image only): counted as a strong call
        notes.append(f"{int(no_text.sum())} row(s) have no text for the classifier (images only); scored p_cheap_ok = 0")

    # Unpriced models are refused unless mapped: by the user here, or by the mapping the router
    # was trained with (recorded in its metadata); either way the report says so.
    # The mapping the router was trained with, unless a --prices file now prices that name itself
    # (a name genai-prices has since learnt keeps the mapping: the figures stay those it was trained
    # on); an explicit --price-as always applies (and is refused if a --prices file prices the name).
    base = PriceTable.load(prices)
    recorded = {name: target for name, target in router.meta.price_as.items() if not base.is_override(name)}
    mapping = {**recorded, **(price_as or {})}
    table = base.with_price_as(mapping)
    for name, priced in mapping.items():
        if name in (read.cheap_model, read.strong_model):
            source = "--price-as" if price_as and name in price_as else "the mapping the router was trained with"
            own = base.lookup(name)
            notes.append(f"{name} has no list price here; priced as {priced} ({source})" if own is None else
                         f"{name} priced as {priced} ({source}), not at its own price ({own.source})")
    out_tok = DEFAULT_OUTPUT_TOKENS if output_tokens is None else int(output_tokens)
    costs = request_costs(read, table, out_tok)
    cc, cs, pair = costs.cheap, costs.strong, costs.pricing
    estimated_in = sum(1 for r in records if r.input_tokens is None)
    estimated_out = sum(1 for r in records if r.output_tokens is None)
    if estimated_in or estimated_out:
        notes.append(
            f"token counts estimated for {estimated_in} row(s) input (chars / 4) and {estimated_out} row(s) "
            f"output ({out_tok} tokens); the log's own counts are used where present"
        )
    inp, out = costs.input_tokens, costs.output_tokens

    trained_files = list(data.files) if data else []
    trained_on = bool(data and data.sha256) and data is not None and data.sha256 == read.data_sha256
    overlap = sorted({f for f in read.files for t in trained_files if _same_file(f, t)})
    digest = data.trained_prompts if data else None
    seen = sum(digest.seen(r.classifier_text) for r in records) if digest is not None else 0
    if trained_on or overlap:
        notes.insert(0, "WARNING: this log is (part of) the data the router was trained on "
                     f"({', '.join(overlap) or 'same sha256'}); its figures are optimistic.")
    elif seen and digest is not None:
        notes.insert(0, f"WARNING: {seen} of {len(records)} rows have prompts the router was trained or validated on "
                     f"(its prompt digest; false-positive rate about {digest.fp_rate:.0e}); its figures are optimistic.")

    info = {
        "model_dir": str(model_dir),
        "artifact_version": router.version,
        "router_pair": [router.cheap_model, router.strong_model],
        "goal": router.meta.goal.to_dict(),
        "goal_summary": router.meta.goal.describe(),
        "logs": list(read.files),
        "rows_read": read.rows_read,
        "rows_used": read.rows_used,
        "skipped": dict(read.skipped),
        "trained_on_this_log": bool(trained_on or overlap or seen),
        "rows_seen_in_training": int(seen),
        "prices": {
            "as_of": table.as_of,
            "source": table.source,
            "files": list(table.files),
            "sources": {m: table.source_of(m) for m in (read.cheap_model, read.strong_model)},
            "cheap_per_1m": {"input": pair.cheap.input, "output": pair.cheap.output},
            "strong_per_1m": {"input": pair.strong.input, "output": pair.strong.output},
        },
        "output_tokens_default": out_tok,
        "notes": notes,
    }
    cheap_passed = np.array([float(r.passed[read.cheap_model]) for r in records])
    strong_passed = np.array([float(r.passed[read.strong_model]) for r in records])
    answer_scores, answer_threshold, answer_tokens = None, None, None
    scorer = router.answer_score
    if scorer is not None:
        answers = [r.answers.get(read.cheap_model) for r in records]
        logprobs = [r.token_logprobs.get(read.cheap_model) for r in records]
        missing = sum(a is None for a in answers)
        if scorer.needs_logprobs:
            missing = sum(a is None or t is None for a, t in zip(answers, logprobs))
        info["escalation"] = {"on": True, "answer_threshold": scorer.threshold, "family": scorer.record.family,
                              "reads_logprobs": scorer.needs_logprobs}
        if missing:
            what = ("answer or its token log-probabilities (grading.<model>.answer, .token_logprobs)"
                    if scorer.needs_logprobs else "answer (grading.<model>.answer)")
            notes.insert(0, f"WARNING: the router escalates on its answer score, but {missing} of {len(records)} rows "
                         f"lack the cheap model's {what}: the figures leave escalation out, so quality is understated "
                         "and cost overstated or understated (router-label keeps answers)")
        else:
            answer_scores = scorer.score_answers([a or "" for a in answers], p, token_logprobs=logprobs)
            answer_threshold = scorer.threshold
            answer_tokens = np.array([len(a or "") / 4.0 for a in answers])
    return LabelledScores(p, cheap_passed, strong_passed, np.asarray(cc, float), np.asarray(cs, float), inp, out,
                          router.threshold, read.cheap_model, read.strong_model, dict(reasons), info,
                          answer_scores=answer_scores, answer_threshold=answer_threshold, answer_tokens=answer_tokens)
