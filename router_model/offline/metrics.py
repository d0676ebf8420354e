"""Routing and calibration metrics (numpy only), as defined in shared/notes/METRICS.md.

Conventions: `r` is the router score, higher = more reason to call the strong model;
`cheap_passed` and `strong_passed` are the cheap and the strong model's quality per prompt, in
[0, 1] (inside a function, where the formulas are easier to read short: `w` for the cheap ("weak")
model and `s` for the strong one).

Ties in `r` are scored as the expectation over random tie-breaking: inside a block of tied
scores the gain (s - w) accrues linearly, so the expected gain curve is the piecewise-linear
interpolation between block boundaries. A fractional number of strong calls k = x * n is handled
by the same linear interpolation. Hence a constant score gives exactly the random-routing line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np

__all__ = [
    "ReliabilityBins",
    "RoutingResult",
    "ScoreBlocks",
    "apgr",
    "auc",
    "brier",
    "cpt",
    "ece",
    "cumulative_by_score",
    "evaluate_routing",
    "expected_at_shares",
    "pgr_curve",
    "quality_curve",
    "reliability_bins",
    "routing_scores",
]

ArrayLike = Union[np.ndarray, "Sequence[float]"]


def _arrays(*named: tuple[str, ArrayLike]) -> list[np.ndarray]:
    """Float 1-d arrays of equal, non-zero length, or a ValueError naming the culprit."""
    out = []
    for name, a in named:
        arr = np.asarray(a, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append(arr)
    n = len(out[0])
    if n == 0:
        raise ValueError("empty input: need at least one prompt")
    for arr in out:
        if len(arr) != n:
            lens = ", ".join(f"{nm}={len(a)}" for (nm, _), a in zip(named, out))
            raise ValueError(f"length mismatch: {lens}")
    return out


class ScoreBlocks(NamedTuple):
    """Rows sorted by score (highest first) and cut at tie-block boundaries.

    `k[j]` is the number of top rows before boundary j (0 .. n); `sums[c][j]` is the sum of
    column c over those rows; `sorted_scores` is the score column in that order. Every metric
    that sends "the top k by score" somewhere (PGR, the quality curve, the threshold search, the
    savings table) reads its numbers from here, so ties are handled one way everywhere.
    """

    k: np.ndarray
    sums: tuple[np.ndarray, ...]
    sorted_scores: np.ndarray


def cumulative_by_score(score: np.ndarray, *columns: np.ndarray) -> ScoreBlocks:
    """Cumulative sums of `columns` over the top-k rows by `score`, at every tie-block boundary."""
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    ends = np.flatnonzero(np.diff(ranked) != 0) + 1  # block ends (exclusive), before the last
    k = np.concatenate([[0], ends, [len(score)]])
    sums = tuple(np.concatenate([[0.0], np.cumsum(np.asarray(c, dtype=float)[order])])[k] for c in columns)
    return ScoreBlocks(k, sums, ranked)


def _gain_breakpoints(r: np.ndarray, cheap_passed: np.ndarray, strong_passed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k at tie-block boundaries, cumulative gain sum(strong - cheap) of the top-k there), k from 0 to n."""
    blocks = cumulative_by_score(r, strong_passed - cheap_passed)
    return blocks.k.astype(float), blocks.sums[0]


def expected_at_shares(
    r: ArrayLike,
    cheap_passed: ArrayLike,
    strong_passed: ArrayLike,
    *,
    cost_cheap: ArrayLike,
    cost_strong: ArrayLike,
    shares: ArrayLike,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean quality, mean cost per request) when the top share*n rows by `r` go to the strong model.

    Ties in `r` and a fractional k = share * n are taken in expectation over random tie-breaking
    (linear interpolation between tie-block boundaries), as in `quality_curve`.
    """
    r_, w_, s_, cc, cs = _arrays(("r", r), ("cheap_passed", cheap_passed), ("strong_passed", strong_passed),
                                 ("cost_cheap", cost_cheap), ("cost_strong", cost_strong))
    x = np.asarray(shares, dtype=float)
    if np.any((x < 0) | (x > 1)) or not np.all(np.isfinite(x)):
        raise ValueError("shares must lie in [0, 1]")
    n = len(r_)
    blocks = cumulative_by_score(r_, s_ - w_, cs - cc)
    dq, dc = blocks.sums
    quality = (w_.sum() + np.interp(x * n, blocks.k, dq)) / n
    cost = (cc.sum() + np.interp(x * n, blocks.k, dc)) / n
    return quality, cost


def routing_scores(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike) -> dict[str, float]:
    """The field's summary of a router score: APGR, CPT(50%) and CPT(80%)."""
    w, s = cheap_passed, strong_passed
    return {"apgr": apgr(r, w, s), "cpt50": cpt(r, w, s, pct=50), "cpt80": cpt(r, w, s, pct=80)}


def _pgr_breakpoints(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r_, w_, s_ = _arrays(("r", r), ("cheap_passed", cheap_passed), ("strong_passed", strong_passed))
    n = len(r_)
    q_weak, q_strong = float(w_.mean()), float(s_.mean())
    if q_strong == q_weak:
        raise ValueError(
            f"PGR is undefined: the strong and cheap model have the same mean quality ({q_strong:.6g})"
        )
    ks, g = _gain_breakpoints(r_, w_, s_)
    return ks / n, (g / n) / (q_strong - q_weak)


def quality_curve(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike, *,
                  n_points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """(x, q(x)): mean quality when the top x share (by r) goes to the strong model."""
    r_, w_, s_ = _arrays(("r", r), ("cheap_passed", cheap_passed), ("strong_passed", strong_passed))
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    n = len(r_)
    ks, g = _gain_breakpoints(r_, w_, s_)
    x = np.linspace(0.0, 1.0, n_points)
    return x, (w_.sum() + np.interp(x * n, ks, g)) / n


def pgr_curve(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike, *,
              n_points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """(x, PGR(x)): share of the strong-vs-cheap quality gap recovered at strong-call share x."""
    xb, pb = _pgr_breakpoints(r, cheap_passed, strong_passed)
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    x = np.linspace(0.0, 1.0, n_points)
    return x, np.interp(x, xb, pb)


def apgr(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike, *, n_points: int = 201) -> float:
    """Average PGR over x in [0, 1] (trapezoid rule on an n_points grid); random routing = 0.5."""
    x, p = pgr_curve(r, cheap_passed, strong_passed, n_points=n_points)
    return float(np.sum((p[1:] + p[:-1]) * np.diff(x)) / 2.0)


def cpt(r: ArrayLike, cheap_passed: ArrayLike, strong_passed: ArrayLike, *, pct: float) -> float:
    """Smallest strong-call share x with PGR(x) >= pct/100 (NaN if never reached).

    PGR is piecewise linear between tie-block boundaries, so the crossing is found exactly by
    interpolating inside the first segment that reaches the target (the limit of a fine grid).
    """
    if not math.isfinite(pct):
        raise ValueError(f"pct must be a finite percentage, got {pct!r}")
    xb, pb = _pgr_breakpoints(r, cheap_passed, strong_passed)
    target = pct / 100.0
    hit = np.flatnonzero(pb >= target - 1e-12)
    if len(hit) == 0:
        return math.nan
    j = int(hit[0])
    if j == 0:
        return 0.0
    x0, x1, p0, p1 = xb[j - 1], xb[j], pb[j - 1], pb[j]
    return float(min(x1, x0 + (target - p0) * (x1 - x0) / (p1 - p0)))


def auc(score: ArrayLike, y: ArrayLike) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic with tied scores given average ranks."""
    sc, yy = _arrays(("score", score), ("y", y))
    if not np.all((yy == 0) | (yy == 1)):
        raise ValueError("y must be binary (0/1 or bool)")
    n_pos = int(yy.sum())
    n_neg = len(yy) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes in y")
    order = np.argsort(sc, kind="stable")
    sorted_sc = sc[order]
    ranks = np.empty(len(sc))
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_sc) != 0) + 1])
    ends = np.concatenate([starts[1:], [len(sc)]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[yy == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _prob_y(prob: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, yy = _arrays(("prob", prob), ("y", y))
    if np.any((p < 0) | (p > 1)):
        raise ValueError("prob must lie in [0, 1]")
    if np.any((yy < 0) | (yy > 1)):
        raise ValueError("y must lie in [0, 1]")
    return p, yy


class ReliabilityBins(NamedTuple):
    """Per-bin data for a reliability diagram (NaN means and frequencies for empty bins)."""

    centers: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray


def reliability_bins(prob: ArrayLike, y: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Equal-width bins on [0, 1] (p = 1 falls in the last bin): mean prediction vs outcome."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, yy = _prob_y(prob, y)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=yy, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        obs = np.where(counts > 0, sum_y / counts, np.nan)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    return ReliabilityBins(centers, mean_p, obs, counts)


def ece(prob: ArrayLike, y: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error: |mean prob - observed frequency| per equal-width bin, weighted by size."""
    b = reliability_bins(prob, y, n_bins)
    full = b.counts > 0
    return float(np.sum(b.counts[full] * np.abs(b.mean_predicted[full] - b.observed[full])) / b.counts.sum())


def brier(prob: ArrayLike, y: ArrayLike) -> float:
    """Mean squared error of the probability."""
    p, yy = _prob_y(prob, y)
    return float(np.mean((p - yy) ** 2))


@dataclass(frozen=True)
class RoutingResult:
    """What a concrete routing decision achieves on a labelled set (costs are totals over it)."""

    n: int
    strong_share: float
    quality: float
    quality_vs_strong: float
    pass_rate: float
    cost: float
    cost_per_request: float
    cost_always_strong: float
    cost_saved_fraction: float


def evaluate_routing(
    route_strong: ArrayLike,
    cheap_passed: ArrayLike,
    strong_passed: ArrayLike,
    *,
    cost_cheap: float | ArrayLike,
    cost_strong: float | ArrayLike,
    pass_threshold: float = 0.8,
) -> RoutingResult:
    """Quality, pass rate (quality >= pass_threshold) and cost of sending `route_strong` rows to strong.

    Costs are per request: scalars or one value per row (e.g. token counts times prices).
    """
    rs = np.asarray(route_strong)
    if rs.dtype != bool:
        raise ValueError(f"route_strong must be a boolean array, got dtype {rs.dtype}")
    w_, s_ = _arrays(("cheap_passed", cheap_passed), ("strong_passed", strong_passed))
    if len(rs) != len(w_):
        raise ValueError(f"length mismatch: route_strong={len(rs)}, cheap_passed={len(w_)}")
    n = len(w_)
    cc = np.broadcast_to(np.asarray(cost_cheap, dtype=float), (n,))
    cs = np.broadcast_to(np.asarray(cost_strong, dtype=float), (n,))
    if np.any(cc < 0) or np.any(cs < 0) or not (np.all(np.isfinite(cc)) and np.all(np.isfinite(cs))):
        raise ValueError("costs must be finite and >= 0")
    q_strong = float(s_.mean())
    if q_strong == 0:
        raise ValueError("quality_vs_strong is undefined: the strong model's mean quality is 0")
    q = np.where(rs, s_, w_)
    cost = float(np.where(rs, cs, cc).sum())
    always = float(cs.sum())
    return RoutingResult(
        n=n,
        strong_share=float(rs.mean()),
        quality=float(q.mean()),
        quality_vs_strong=float(q.mean()) / q_strong,
        pass_rate=float(np.mean(q >= pass_threshold - 1e-9)),
        cost=cost,
        cost_per_request=cost / n,
        cost_always_strong=always,
        cost_saved_fraction=(always - cost) / always if always > 0 else 0.0,
    )
