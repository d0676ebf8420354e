"""Held-out evaluation: the router beside random, heuristic and oracle routing on the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from router_model.offline import metrics as M
from training.evaluate.baselines import heuristic_scores, oracle_scores, random_scores
from training.head import cheap_loses_nothing, strong_loses_nothing

RANDOM_EXPECTED = {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}


def at_share(
    r: np.ndarray,
    share: float,
    *,
    cheap_passed: np.ndarray,
    strong_passed: np.ndarray,
    cost_cheap: np.ndarray,
    cost_strong: np.ndarray,
) -> dict[str, float]:
    """What sending the top `share` by score to the strong model achieves (ties in expectation)."""
    (q,), (c,) = M.expected_at_shares(r, cheap_passed, strong_passed, cost_cheap=cost_cheap, cost_strong=cost_strong,
                                      shares=[share])
    always = float(np.mean(cost_strong))
    return {
        "strong_share": float(share),
        "quality_vs_strong": float(q / np.mean(strong_passed)),
        "pass_rate": float(q),
        "cost_saved": float((always - c) / always) if always > 0 else 0.0,
    }


def evaluate(
    p: np.ndarray,
    threshold: float,
    *,
    cheap_passed: np.ndarray,
    strong_passed: np.ndarray,
    cost_cheap: np.ndarray,
    cost_strong: np.ndarray,
    texts: Sequence[str],
    p_strong_ok: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out metrics for the router (score 1 - p_cheap_ok, decision p < threshold) and the baselines.

    With `p_strong_ok` (1 - P(only cheap passes)) the decision's confidence is scored too: for each
    row, the probability that the chosen model does at least as well, against whether it did.
    """
    ok = cheap_loses_nothing(cheap_passed, strong_passed)
    strong = p < threshold
    res = M.evaluate_routing(strong, cheap_passed, strong_passed, cost_cheap=cost_cheap, cost_strong=cost_strong)
    calibration: dict[str, float] = {}
    if p_strong_ok is not None:
        confidence = np.where(strong, p_strong_ok, p)
        right = np.where(strong, strong_loses_nothing(cheap_passed, strong_passed), ok)
        calibration = {"confidence_ece": M.ece(confidence, right, n_bins=15), "confidence_brier": M.brier(confidence, right),
                       "confidence_mean": float(confidence.mean()), "chosen_at_least_as_good": float(right.mean())}
    router = {
        **M.routing_scores(1.0 - p, cheap_passed, strong_passed),
        "auc": M.auc(p, ok),
        "ece": M.ece(p, ok, n_bins=15),
        "brier": M.brier(p, ok),
        "strong_share": res.strong_share,
        "pass_rate": res.quality,
        "quality_vs_strong": res.quality_vs_strong,
        "cost_saved": res.cost_saved_fraction,
        **calibration,
    }
    baselines = {
        "random": random_scores(len(p), seed=seed),
        "heuristic": heuristic_scores(texts),
        "oracle": oracle_scores(cheap_passed, strong_passed),
    }
    out: dict[str, Any] = {"router": router, "n_test": len(p), "q_weak": float(cheap_passed.mean()),
                           "q_strong": float(strong_passed.mean())}
    for name, score in baselines.items():
        block = dict(RANDOM_EXPECTED) if name == "random" else M.routing_scores(score, cheap_passed, strong_passed)
        block.update(at_share(score, res.strong_share, cheap_passed=cheap_passed, strong_passed=strong_passed,
                              cost_cheap=cost_cheap, cost_strong=cost_strong))
        out[name] = block
    return out
