"""Scoring one registered version on the frozen eval log, and the paired comparison of two.

`router-promote` (training/promote.py) decides; this module only measures: each version at its
own threshold (APGR, CPT, ECE, quality, strong share, dollars), whether its goal holds, how many
eval prompts it was trained on, and a paired bootstrap interval of the APGR difference.

`read_eval_log` is everything about the log that needs no scores (its rows and outcomes for the
version's pair, their costs, how many prompts the version was trained on), so that a promotion
refused for what the log is refuses before any graph runs; `score_model` then runs the graph
(`score_log`), or takes a version's scores on the log from the score cache (training/promote_cache.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from router_model.artifact import read_metadata
from router_model.cost import DEFAULT_OUTPUT_TOKENS, PairPricing, PriceTable
from router_model.errors import RouterError
from router_model.offline import metrics as M
from router_model.offline.costs import request_costs
from router_model.offline.log import LogFormatError, ReadOptions, read_logs
from router_model.offline.savings import LabelledScores, _same_file, score_log
from training.head import cheap_loses_nothing
from training.promote_cache import ScoreCache, score_key

INTERVAL = 0.90


class PromotionUsageError(RouterError):
    """Bad arguments or data: no such model or version, an unreadable log, mismatched pairs (exit 2)."""


@dataclass(frozen=True)
class ModelScore:
    """One version scored on the eval log; the routing figures are at its own threshold."""

    version: str
    artifact_version: str
    threshold: float
    apgr: float
    cpt50: float
    cpt80: float
    ece: float
    quality: float  # pass rate
    quality_vs_strong: float
    strong_share: float
    cost_saved: float
    cost_per_request: float
    goal: str
    goal_holds: bool
    rows_seen_in_training: int
    overlap_allowance: int


@dataclass(frozen=True)
class EvalView:
    """The eval log as one version sees it before its graph runs (what `score_log` reads, prices and
    checks against the version's prompt digest, computed the same way)."""

    version: str
    eval_log_sha256: str
    n: int
    cheap_passed: np.ndarray
    strong_passed: np.ndarray
    cost_cheap: np.ndarray
    cost_strong: np.ndarray
    pricing: PairPricing
    rows_seen_in_training: int
    overlap_allowance: int

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {"cheap_passed": self.cheap_passed, "strong_passed": self.strong_passed,
                "cost_cheap": self.cost_cheap, "cost_strong": self.cost_strong}


def _overlap_allowance(n: int, fp_rate: float) -> int:
    """Bloom false positives tolerated among n rows: mean + 3 sd + 1 (a chance below 1e-3 of a wrong refusal)."""
    mean = n * fp_rate
    return int(math.floor(mean + 3.0 * math.sqrt(mean) + 1.0))


def _goal_holds(kind: str, value: float, res: M.RoutingResult, *, tolerance: float) -> bool:
    if kind == "quality_floor":
        return res.quality_vs_strong >= value - tolerance - 1e-12
    if kind == "max_strong_share":
        return res.strong_share <= value + tolerance + 1e-12
    if kind == "max_cost_per_request":
        return res.cost_per_request <= value * (1.0 + tolerance) + 1e-12
    return False


def _pair_mismatch(version: str, routes: tuple[str, str], eval_log: Path, log_pair: tuple[str, str]) -> PromotionUsageError:
    return PromotionUsageError(
        f"v{version} routes {routes[0]} / {routes[1]} but the eval log {eval_log} has outcomes for "
        f"{log_pair[0]} / {log_pair[1]}: score it on a log of its own pair")


def read_eval_log(model_dir: Path, eval_log: Path, version: str, *, eval_log_sha256: str, prices: Path | None = None,
                  price_as: Mapping[str, str] | None = None) -> EvalView:
    """The eval log for one version without running its graph: what `score_log` reads (the same reader
    options, the same fallback to the log's own pair), the same costs, and the same count of prompts
    the version was trained or validated on. Raises what scoring would for the log alone: an
    unreadable log (LogFormatError), another pair (PromotionUsageError), an unpriced model, a log no
    figure is defined on (ValueError, as the metrics raise it)."""
    meta = read_metadata(model_dir)
    data = meta.data
    options = ReadOptions(pass_threshold=data.pass_threshold if data else 0.8, skip_invalid=False)
    routes = (meta.cheap_model, meta.strong_model)
    try:
        read = read_logs([eval_log], models=routes, options=options)
    except LogFormatError as e:
        if e.problems or "never occur" not in str(e):
            raise
        read = read_logs([eval_log], models=None, options=options)
    if routes != (read.cheap_model, read.strong_model):
        raise _pair_mismatch(version, routes, eval_log, (read.cheap_model, read.strong_model))
    base = PriceTable.load(prices)
    recorded = {name: target for name, target in meta.price_as.items() if not base.is_override(name)}
    costs = request_costs(read, base.with_price_as({**recorded, **(price_as or {})}), DEFAULT_OUTPUT_TOKENS)
    records = read.records
    n = len(records)
    trained_files = list(data.files) if data else []
    trained_on = bool(data and data.sha256) and data is not None and data.sha256 == read.data_sha256
    overlap = any(_same_file(f, t) for f in read.files for t in trained_files)
    digest = data.trained_prompts if data else None
    seen = sum(digest.seen(r.classifier_text) for r in records) if digest is not None else 0
    if (trained_on or overlap) and not seen:
        seen = n  # the same file (or sha256) as its training log
    cheap_passed = np.array([float(r.passed[read.cheap_model]) for r in records])
    strong_passed = np.array([float(r.passed[read.strong_model]) for r in records])
    cost_cheap, cost_strong = np.asarray(costs.cheap, float), np.asarray(costs.strong, float)
    # The figures that are undefined on this log whatever the scores (no row, a strong model that
    # passes nothing, both models as good): raised here as score_model would raise them.
    M.evaluate_routing(np.ones(n, dtype=bool), cheap_passed, strong_passed, cost_cheap=cost_cheap, cost_strong=cost_strong)
    M.routing_scores(np.zeros(n), cheap_passed, strong_passed)
    return EvalView(version=version, eval_log_sha256=eval_log_sha256, n=n, cheap_passed=cheap_passed,
                    strong_passed=strong_passed, cost_cheap=cost_cheap, cost_strong=cost_strong, pricing=costs.pricing,
                    rows_seen_in_training=int(seen),
                    overlap_allowance=_overlap_allowance(n, digest.fp_rate) if digest is not None else 0)


def _scores(model_dir: Path, eval_log: Path, *, prices: Path | None, price_as: Mapping[str, str] | None,
            view: EvalView | None, cache: ScoreCache | None) -> LabelledScores:
    """`score_log` of the version on the eval log, through the score cache when there is one."""
    if cache is None or view is None:
        return score_log(model_dir, [eval_log], prices=prices, price_as=price_as)
    key = score_key(model_dir, eval_log_sha256=view.eval_log_sha256, prices=prices, price_as=dict(price_as or {}),
                    pricing=view.pricing)
    sc = cache.load(key, view.arrays)
    if sc is None:
        sc = score_log(model_dir, [eval_log], prices=prices, price_as=price_as)
        cache.store(key, sc)
    return sc


def score_model(model_dir: Path, eval_log: Path, version: str, *, tolerance: float, prices: Path | None = None,
                price_as: Mapping[str, str] | None = None, view: EvalView | None = None,
                cache: ScoreCache | None = None) -> tuple[ModelScore, LabelledScores]:
    """(ModelScore, the per-row arrays) of one model directory on the eval log.

    Costs use the price table (`prices` over the packaged one) and the mapping the router was trained
    with (`price_as` in its metadata), `price_as` here taking precedence. A router trained on another
    pair than the log's is refused (PromotionUsageError): its figures would be another pair's.
    With `view` (`read_eval_log` of this version and log) the count of trained prompts is the view's,
    and with `cache` too the scores come from the score cache when it holds them.
    """
    sc = _scores(model_dir, eval_log, prices=prices, price_as=price_as, view=view, cache=cache)
    meta = read_metadata(model_dir)
    if (meta.cheap_model, meta.strong_model) != (sc.cheap_model, sc.strong_model):
        raise _pair_mismatch(version, (meta.cheap_model, meta.strong_model), eval_log, (sc.cheap_model, sc.strong_model))
    strong_first, escalated = sc.served()
    res = M.evaluate_routing(strong_first | escalated, sc.cheap_passed, sc.strong_passed, cost_cheap=sc.cost_cheap,
                             cost_strong=sc.cost_strong)
    if escalated.any():  # an escalated request paid for the cheap answer too
        cost = res.cost + float((sc.cost_cheap * escalated).sum())
        res = replace(res, cost=cost, cost_per_request=cost / res.n,
                      cost_saved_fraction=1.0 - cost / res.cost_always_strong if res.cost_always_strong else 0.0)
    scores = M.routing_scores(1.0 - sc.p, sc.cheap_passed, sc.strong_passed)
    digest = meta.data.trained_prompts if meta.data else None
    n = len(sc.p)
    seen = int(sc.info.get("rows_seen_in_training", 0))
    if sc.info.get("trained_on_this_log") and not seen:
        seen = n  # the same file (or sha256) as its training log
    allowance = _overlap_allowance(n, digest.fp_rate) if digest is not None else 0
    if view is not None:
        seen, allowance = view.rows_seen_in_training, view.overlap_allowance
    score = ModelScore(
        version=version,
        artifact_version=meta.artifact_version,
        threshold=float(sc.threshold),
        apgr=scores["apgr"],
        cpt50=scores["cpt50"],
        cpt80=scores["cpt80"],
        ece=M.ece(sc.p, cheap_loses_nothing(sc.cheap_passed, sc.strong_passed), n_bins=15),
        quality=res.quality,
        quality_vs_strong=res.quality_vs_strong,
        strong_share=res.strong_share,
        cost_saved=res.cost_saved_fraction,
        cost_per_request=res.cost_per_request,
        goal=f"{meta.goal.kind}={meta.goal.value:g}",
        goal_holds=_goal_holds(meta.goal.kind, meta.goal.value, res, tolerance=tolerance),
        rows_seen_in_training=seen,
        overlap_allowance=allowance,
    )
    return score, sc


def _too_uniform() -> PromotionUsageError:
    return PromotionUsageError("the eval log is too small or too uniform for a bootstrap interval of APGR")


def check_bootstrap(cheap_passed: np.ndarray, strong_passed: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> None:
    """Raise what `paired_bootstrap_apgr` would raise for a log too small or too uniform (it skips a
    resample where both models' mean quality ties, and needs half of them): the same resamples, drawn
    the same way, without the scores, so that this usage error comes before any version is scored."""
    rng = np.random.default_rng(seed)
    n = len(cheap_passed)
    kept = 0
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if cheap_passed[idx].mean() != strong_passed[idx].mean():
            kept += 1
    if kept < resamples // 2:
        raise _too_uniform()


def paired_bootstrap_apgr(p_candidate: np.ndarray, p_champion: np.ndarray, *, cheap_passed: np.ndarray,
                          strong_passed: np.ndarray, resamples: int = 2000, seed: int = 0,
                          level: float = INTERVAL) -> tuple[float, float, float]:
    """(APGR difference, lower, upper): the same resampled rows score both models (a paired interval).

    Percentile interval; a resample where both models' mean quality ties (PGR undefined) is skipped.
    """
    diff = (M.apgr(1.0 - p_candidate, cheap_passed, strong_passed)
            - M.apgr(1.0 - p_champion, cheap_passed, strong_passed))
    rng = np.random.default_rng(seed)
    n = len(cheap_passed)
    out = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        cheap, strong = cheap_passed[idx], strong_passed[idx]
        if cheap.mean() == strong.mean():
            continue
        out.append(M.apgr(1.0 - p_candidate[idx], cheap, strong) - M.apgr(1.0 - p_champion[idx], cheap, strong))
    if len(out) < resamples // 2:
        raise _too_uniform()
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(out), [tail, 100.0 - tail])
    return float(diff), float(lo), float(hi)


# ------------------------------------------------------------------------------ the table

