"""Pick the serving threshold for a goal the user can state in their own terms.

Serving rule: route to the cheap model iff p_cheap_ok >= threshold. Candidates are 0.0 (all
cheap), the midpoints between sorted unique probabilities, and the float just above 1.0 (all
strong); each is evaluated with one sort and cumulative sums, so 100k rows take milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from router_model.errors import ConfigError
from training.evaluate.metrics import cumulative_by_score

__all__ = ["ALL_STRONG", "DEFAULT_GOAL", "Goal", "ThresholdChoice", "choose_threshold"]

GoalKind = Literal["quality_floor", "max_strong_share", "max_cost_per_request"]
ALL_STRONG = math.nextafter(1.0, 2.0)  # no probability reaches it: every request goes strong


@dataclass(frozen=True)
class Goal:
    """What to optimise for: keep a quality floor, cap the strong-call share, or cap the cost."""

    kind: GoalKind
    value: float

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"goal value must be a finite number, got {v!r}")
        if self.kind == "quality_floor":
            if not 0.0 < v <= 1.5:
                raise ConfigError(f"quality floor is a fraction of always-strong quality in (0, 1.5], got {v!r}")
        elif self.kind == "max_strong_share":
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"max strong share must be in [0, 1], got {v!r}")
        elif self.kind == "max_cost_per_request":
            if not v > 0.0:
                raise ConfigError(f"max cost per request must be > 0, got {v!r}")
        else:
            raise ConfigError(
                f"unknown goal kind {self.kind!r}; expected quality_floor, max_strong_share or max_cost_per_request"
            )

    @classmethod
    def quality_floor(cls, value: float = 0.95) -> Goal:
        """Keep at least `value` x the always-strong mean quality, with the most cheap calls."""
        return cls("quality_floor", value)

    @classmethod
    def max_strong_share(cls, value: float) -> Goal:
        """Best quality while sending at most `value` of the requests to the strong model."""
        return cls("max_strong_share", value)

    @classmethod
    def max_cost_per_request(cls, value: float) -> Goal:
        """Best quality while the mean cost per request stays at most `value`."""
        return cls("max_cost_per_request", value)


DEFAULT_GOAL = Goal.quality_floor(0.95)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and what it achieves on the data it was chosen on."""

    threshold: float
    goal: Goal
    met: bool
    strong_share: float
    quality_vs_strong: float
    cost_per_request: float
    cost_saved_fraction: float
    quality: float


def _vec(name: str, a: float | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"length mismatch: {name} has shape {arr.shape}, expected ({n},)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def choose_threshold(
    p_cheap_ok: np.ndarray,
    w: np.ndarray,
    s: np.ndarray,
    cost_cheap: float | np.ndarray,
    cost_strong: float | np.ndarray,
    goal: Goal = DEFAULT_GOAL,
) -> ThresholdChoice:
    """Choose the threshold that meets `goal` on this labelled set (met=False if none can).

    quality_floor: the lowest threshold whose quality_vs_strong >= value; if none, all strong.
    max_strong_share: the best quality with strong_share <= value (always feasible: all cheap).
    max_cost_per_request: the best quality with mean cost <= value; if none, the cheapest.
    Quality ties go to the cheaper candidate (more cheap calls).
    """
    p = np.asarray(p_cheap_ok, dtype=float)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"p_cheap_ok must be a non-empty 1-d array, got shape {p.shape}")
    n = len(p)
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p_cheap_ok must be probabilities in [0, 1]")
    w_, s_ = _vec("w", w, n), _vec("s", s, n)
    cc, cs = _vec("cost_cheap", cost_cheap, n), _vec("cost_strong", cost_strong, n)
    q_strong = float(s_.mean())
    if q_strong <= 0:
        raise ValueError("quality_vs_strong is undefined: the strong model's mean quality is 0")

    # Most confident first: the top j rows by p go cheap. Candidates only at tie-block boundaries.
    blocks = cumulative_by_score(p, w_ - s_, cc - cs)
    bounds, ps = blocks.k, blocks.sorted_scores
    d_q, d_c = blocks.sums
    quality = (s_.sum() + d_q) / n
    cost = (cs.sum() + d_c) / n
    share = (n - bounds) / n
    # Thresholds: above 1 for j=0, midpoints between consecutive unique values, 0.0 for all cheap.
    thr = np.empty(len(bounds))
    thr[0] = ALL_STRONG
    thr[-1] = 0.0
    if len(bounds) > 2:
        mid = bounds[1:-1]
        thr[1:-1] = (ps[mid - 1] + ps[mid]) / 2.0
    qvs = quality / q_strong

    eps = 1e-12
    if goal.kind == "quality_floor":
        ok = np.flatnonzero(qvs >= goal.value - eps)
        met = len(ok) > 0
        i = int(ok[-1]) if met else 0
    else:
        limit = share if goal.kind == "max_strong_share" else cost
        ok = np.flatnonzero(limit <= goal.value + eps)
        met = len(ok) > 0
        if met:
            best = quality[ok].max()
            i = int(ok[quality[ok] >= best - eps][-1])  # the cheapest of the best
        else:
            i = int(np.argmin(cost[::-1]))
            i = len(cost) - 1 - i  # cheapest; on ties, the one with more cheap calls
    always = cs.sum() / n
    return ThresholdChoice(
        threshold=float(thr[i]),
        goal=goal,
        met=bool(met),
        strong_share=float(share[i]),
        quality_vs_strong=float(qvs[i]),
        cost_per_request=float(cost[i]),
        cost_saved_fraction=float((always - cost[i]) / always) if always > 0 else 0.0,
        quality=float(quality[i]),
    )
