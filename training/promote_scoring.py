"""Scoring one registered version on the frozen eval log, and the paired comparison of two.

`router-promote` (training/promote.py) decides; this module only measures: each version at its
own threshold (APGR, CPT, ECE, quality, strong share, dollars), whether its goal holds, how many
eval prompts it was trained on, and a paired bootstrap interval of the APGR difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_model.artifact import read_metadata
from router_model.errors import RouterError
from router_model.offline import metrics as M
from router_model.offline.savings import score_log
from training.head import cheap_loses_nothing

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


def score_model(model_dir: Path, eval_log: Path, version: str, *, tolerance: float, prices: Path | None = None,
                price_as: Mapping[str, str] | None = None):
    """(ModelScore, the per-row arrays) of one model directory on the eval log.

    Costs use the price table (`prices` over the packaged one) and the mapping the router was trained
    with (`price_as` in its metadata), `price_as` here taking precedence. A router trained on another
    pair than the log's is refused (PromotionUsageError): its figures would be another pair's.
    """
    sc = score_log(model_dir, [eval_log], prices=prices, price_as=price_as)
    meta = read_metadata(model_dir)
    if (meta.cheap_model, meta.strong_model) != (sc.cheap_model, sc.strong_model):
        raise PromotionUsageError(
            f"v{version} routes {meta.cheap_model} / {meta.strong_model} but the eval log {eval_log} has outcomes for "
            f"{sc.cheap_model} / {sc.strong_model}: score it on a log of its own pair")
    res = M.evaluate_routing(sc.p < sc.threshold, sc.cheap_passed, sc.strong_passed, cost_cheap=sc.cost_cheap,
                             cost_strong=sc.cost_strong)
    scores = M.routing_scores(1.0 - sc.p, sc.cheap_passed, sc.strong_passed)
    digest = meta.data.trained_prompts if meta.data else None
    n = len(sc.p)
    seen = int(sc.info.get("rows_seen_in_training", 0))
    if sc.info.get("trained_on_this_log") and not seen:
        seen = n  # the same file (or sha256) as its training log
    allowance = _overlap_allowance(n, digest.fp_rate) if digest is not None else 0
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
        raise PromotionUsageError("the eval log is too small or too uniform for a bootstrap interval of APGR")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(out), [tail, 100.0 - tail])
    return float(diff), float(lo), float(hi)


# ------------------------------------------------------------------------------ the table

