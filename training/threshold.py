"""Pick the serving threshold for a goal the user can state in their own terms.

Serving rule: route to the cheap model iff p_cheap_ok >= threshold. By default the goal carries a
risk (`Goal.risk`, 0.05): the threshold is certified by Learn-then-Test (training/risk.py,
docs/guarantee.md) so the goal holds on new traffic with probability >= 1 - risk. With
`risk=None` the old empirical rule applies: the threshold where the labelled set just meets the
goal. Its candidates are 0.0 (all cheap), the midpoints between sorted unique probabilities, and
the float just above 1.0 (all strong); each is evaluated with one sort and cumulative sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from router_model.errors import ConfigError
from router_model.offline.metrics import cumulative_by_score
from router_model.offline.split import group_kfold, normalize_prompt
from training.head import can_cross_fit, out_of_fold_p, refit_head
from training.risk import ALL_STRONG, CERTIFICATES, DEFAULT_CERTIFICATE, certificate_of, certify_budget, certify_quality_floor

__all__ = [
    "DEFAULT_GOAL",
    "DEFAULT_RISK",
    "EMPIRICAL",
    "THRESHOLD_ROWS",
    "Goal",
    "ThresholdChoice",
    "ThresholdStage",
    "choose_threshold",
    "describe_choice",
    "goal_record_fields",
    "threshold_stage",
]

GoalKind = Literal["quality_floor", "max_strong_share", "max_cost_per_request"]
DEFAULT_RISK = 0.05
EMPIRICAL = "empirical"  # the method name of the old rule (risk=None)


@dataclass(frozen=True)
class Goal:
    """What to optimise for: keep a quality floor, cap the strong-call share, or cap the cost.

    `risk`: the allowed chance that the goal fails on new traffic (certified by Learn-then-Test);
    None chooses the threshold where the labelled set just meets the goal, with no guarantee.
    `certificate`: the test behind each threshold (training/risk.py, docs/guarantee.md): "exact"
    (the default: one exact test of the passes lost and won, for a quality floor; betting otherwise),
    "betting" (one betting test of the goal's per-request quantity at the full risk) or
    "clopper-pearson" (the union of exact binomial bounds; Hoeffding-Bentkus for dollars).
    """

    kind: GoalKind
    value: float
    risk: float | None = DEFAULT_RISK
    certificate: str = DEFAULT_CERTIFICATE

    def __post_init__(self) -> None:
        if self.certificate not in CERTIFICATES:
            raise ConfigError(f"certificate must be one of {', '.join(CERTIFICATES)}, got {self.certificate!r}")
        r = self.risk
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0):
            raise ConfigError(f"risk must be a probability in (0, 1) or None (no guarantee), got {r!r}")
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
    def quality_floor(cls, value: float = 0.95, risk: float | None = DEFAULT_RISK,
                      certificate: str = DEFAULT_CERTIFICATE) -> Goal:
        """Keep at least `value` x the always-strong mean quality, with the most cheap calls."""
        return cls("quality_floor", value, risk, certificate)

    @classmethod
    def max_strong_share(cls, value: float, risk: float | None = DEFAULT_RISK,
                         certificate: str = DEFAULT_CERTIFICATE) -> Goal:
        """Best quality while sending at most `value` of the requests to the strong model."""
        return cls("max_strong_share", value, risk, certificate)

    @classmethod
    def max_cost_per_request(cls, value: float, risk: float | None = DEFAULT_RISK,
                             certificate: str = DEFAULT_CERTIFICATE) -> Goal:
        """Best quality while the mean cost per request stays at most `value`."""
        return cls("max_cost_per_request", value, risk, certificate)

    def describe(self) -> str:
        """`quality_floor=0.95 at risk 0.05`, as the summaries print it."""
        risk = "no guarantee (empirical)" if self.risk is None else f"risk {self.risk:g}"
        return f"{self.kind}={self.value:g} at {risk}"


DEFAULT_GOAL = Goal.quality_floor(0.95, DEFAULT_RISK)


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
    method: str = EMPIRICAL
    certified: bool | None = None  # risk-controlled: whether any routing beyond the safe end was certified
    bound: float | None = None  # floor: lower bound on quality / strong; budget: upper bound on the spend
    n_needed: int | None = None  # not certified: sample size at which the observed best gap would certify
    n_labelled: int = 0  # rows the threshold was chosen on
    rows: str = "validation"  # which rows: "validation", "oof" (cross-fitted train + validation) or "all"

    @property
    def certified_floor(self) -> float | None:
        """The quality floor (fraction of always-strong) the served threshold is certified to keep.

        The goal's floor when certified; 1.0 when nothing cheap could be certified (all strong);
        None for the empirical rule and for budget goals.
        """
        if self.goal.risk is None or self.goal.kind != "quality_floor":
            return None
        return float(self.goal.value) if self.certified else 1.0


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
    cheap_passed: np.ndarray,
    strong_passed: np.ndarray,
    *,
    cost_cheap: float | np.ndarray,
    cost_strong: float | np.ndarray,
    goal: Goal = DEFAULT_GOAL,
) -> ThresholdChoice:
    """Choose the threshold for `goal`: certified at `goal.risk`, or (risk None) met on this labelled set.

    Risk-controlled (training/risk.py): quality_floor -> the cheapest certified threshold, all strong
    when none is (met=False); budgets -> the best quality among the certified, all cheap if none.
    Empirical rule (met=False if none can):
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
    # Short local names for the arithmetic: w / s the cheap ("weak") / strong outcomes, cc / cs their costs.
    w, s = _vec("cheap_passed", cheap_passed, n), _vec("strong_passed", strong_passed, n)
    cc, cs = _vec("cost_cheap", cost_cheap, n), _vec("cost_strong", cost_strong, n)
    q_strong = float(s.mean())
    if q_strong <= 0:
        raise ValueError("quality_vs_strong is undefined: the strong model's mean quality is 0")
    if goal.risk is not None:
        return _risk_controlled(p, cheap_passed=w, strong_passed=s, cost_cheap=cc, cost_strong=cs, goal=goal)

    # Most confident first: the top j rows by p go cheap. Candidates only at tie-block boundaries.
    blocks = cumulative_by_score(p, w - s, cc - cs)
    bounds, ps = blocks.k, blocks.sorted_scores
    d_q, d_c = blocks.sums
    quality = (s.sum() + d_q) / n
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
        n_labelled=n,
    )


def _at(p: np.ndarray, threshold: float, goal: Goal, *, cheap_passed: np.ndarray, strong_passed: np.ndarray,
        cost_cheap: np.ndarray, cost_strong: np.ndarray, **extra) -> ThresholdChoice:
    """What routing at `threshold` (cheap iff p >= threshold) achieves on these rows."""
    cheap = p >= threshold
    quality = float(np.where(cheap, cheap_passed, strong_passed).mean())
    cost = float(np.where(cheap, cost_cheap, cost_strong).mean())
    always = float(cost_strong.mean())
    return ThresholdChoice(
        threshold=float(threshold),
        goal=goal,
        strong_share=float(1.0 - cheap.mean()),
        quality_vs_strong=quality / float(strong_passed.mean()),
        cost_per_request=cost,
        cost_saved_fraction=(always - cost) / always if always > 0 else 0.0,
        quality=quality,
        n_labelled=len(p),
        **extra,
    )


def _risk_controlled(p: np.ndarray, *, cheap_passed: np.ndarray, strong_passed: np.ndarray, cost_cheap: np.ndarray,
                     cost_strong: np.ndarray, goal: Goal) -> ThresholdChoice:
    assert goal.risk is not None
    outcomes = {"cheap_passed": cheap_passed, "strong_passed": strong_passed}
    cert = goal.certificate
    if goal.kind == "quality_floor":
        rc = certify_quality_floor(p, **outcomes, floor=goal.value, risk=goal.risk, certificate=cert)
    elif goal.kind == "max_strong_share":
        rc = certify_budget(p, **outcomes, spend_cheap=np.zeros(len(p)), spend_strong=np.ones(len(p)),
                            budget=goal.value, risk=goal.risk, certificate=cert)
    else:
        rc = certify_budget(p, **outcomes, spend_cheap=cost_cheap, spend_strong=cost_strong, budget=goal.value,
                            risk=goal.risk, certificate=cert)
    return _at(p, rc.threshold, goal, **outcomes, cost_cheap=cost_cheap, cost_strong=cost_strong,
               met=rc.certified, method=rc.method, certified=rc.certified, bound=rc.bound, n_needed=rc.n_needed)


# "all" (default): cross-fitted over train + validation, then, after the held-out evaluation, over every
# labelled row (every_row_stage); "oof": over train + validation only; "validation": validation only.
THRESHOLD_ROWS = ("all", "oof", "validation")


@dataclass(frozen=True)
class ThresholdStage:
    """The threshold stage's result: the head to export (refit when chosen on out-of-fold scores) and the choice."""

    head: Any  # training.head.FittedHead
    choice: ThresholdChoice
    rows: str  # "all" (every labelled row), "oof" (cross-fitted over train + validation) or "validation"
    # "oof" and "all": the cross-fitted scores, the rows they belong to (train + validation, or every row)
    # and the folds, which the answer score is cross-fitted over too (training/escalation.py)
    scores: np.ndarray | None = None
    labelled_rows: np.ndarray | None = None
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def threshold_stage(head: Any, X: np.ndarray, texts: list[str], *, cheap_passed: np.ndarray, strong_passed: np.ndarray,
                    cost_cheap: np.ndarray, cost_strong: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                    goal: Goal, rows: str = "all", calibration: str = "sigmoid", seed: int = 0,
                    folds: int = 5) -> ThresholdStage:
    """Choose the threshold on validation scores, or on cross-fitted scores over train + validation.

    "oof" (and "all", whose last step is every_row_stage) gives the bound about 5x the rows on a
    70/15/15 split; the head is then refit on all of train + validation with the same calibration
    (benchmarks/floor_guarantee.py measures whether the guarantee survives the refit). The
    empirical rule (risk None) always uses validation.
    """
    if rows not in THRESHOLD_ROWS:
        raise ValueError(f"threshold rows must be one of {THRESHOLD_ROWS}, got {rows!r}")
    va = val_rows
    lab = np.concatenate([train_rows, val_rows])
    keys = [normalize_prompt(texts[i]) for i in lab]
    k = min(folds, len(set(keys)))
    splits = group_kfold(keys, k=k, seed=seed) if k >= 2 else []
    # A log too small to cross-fit (a class with a single row in some fold) uses validation, and says so.
    if (rows == "validation" or goal.risk is None or not splits
            or not can_cross_fit(head.target, cheap_passed[lab], strong_passed[lab], folds=splits)):
        choice = choose_threshold(head.p_cheap_ok(X[va]), cheap_passed[va], strong_passed[va],
                                  cost_cheap=cost_cheap[va], cost_strong=cost_strong[va], goal=goal)
        return ThresholdStage(head, choice, "validation")
    labelled = {"cheap_passed": cheap_passed[lab], "strong_passed": strong_passed[lab]}
    oof = out_of_fold_p(head, X[lab], **labelled, folds=splits, calibration=calibration, seed=seed)
    choice = choose_threshold(oof, **labelled, cost_cheap=cost_cheap[lab], cost_strong=cost_strong[lab], goal=goal)
    refit = refit_head(head, X[lab], **labelled, calibration=calibration, seed=seed)
    return ThresholdStage(refit, replace(choice, rows="oof"), "oof", scores=oof, labelled_rows=lab, folds=tuple(splits))


def every_row_stage(stage: ThresholdStage, X: np.ndarray, texts: list[str], *, cheap_passed: np.ndarray,
                    strong_passed: np.ndarray, cost_cheap: np.ndarray, cost_strong: np.ndarray,
                    train_rows: np.ndarray, val_rows: np.ndarray, test_rows: np.ndarray, goal: Goal,
                    calibration: str = "sigmoid", seed: int = 0) -> ThresholdStage:
    """After the held-out evaluation: the threshold certified on every labelled row, the head refit on all of them.

    Why: on a small log the test split's 15% is worth more to the certificate and the head than to
    a second look (benchmarks/head_variants.py: +2.3 points of cheap share at 1,000 rows, +1.2 at
    3,000). The same cross-fitting as `threshold_stage`, with the test rows in the folds: every row
    is scored by the head fitted without its fold, each fold head on 80% of the rows as before.
    (Scoring the test split with the train + validation head instead, as one more fold, certified
    rows scored by heads of unequal strength; it held the floor less often.) A stage that was not
    cross-fitted, or has no risk, is returned unchanged.
    """
    if stage.rows != "oof" or goal.risk is None or len(test_rows) == 0:
        return stage
    final = threshold_stage(stage.head, X, texts, cheap_passed=cheap_passed, strong_passed=strong_passed,
                            cost_cheap=cost_cheap, cost_strong=cost_strong,
                            train_rows=np.concatenate([train_rows, test_rows]), val_rows=val_rows, goal=goal,
                            rows="oof", calibration=calibration, seed=seed)
    if final.rows != "oof":  # a class too rare to cross-fit with the test rows in: keep train + validation
        return stage
    return replace(final, choice=replace(final.choice, rows="all"), rows="all")


def goal_record_fields(choice: ThresholdChoice) -> dict[str, Any]:
    """The GoalRecord (metadata.json) fields of a choice: goal, risk, method, certified floor."""
    g = choice.goal
    return {"kind": g.kind, "value": float(g.value), "met_on_validation": bool(choice.met), "risk": g.risk,
            "method": choice.method, "certified": choice.certified, "certified_floor": choice.certified_floor,
            "bound": choice.bound, "n_labelled": choice.n_labelled, "n_needed": choice.n_needed,
            "threshold_rows": choice.rows, "certificate": certificate_of(choice.method) or "none"}


ROWS_WORDS = {"all": "cross-fitted labelled (every row, the test split included)",
              "oof": "cross-fitted train+validation", "validation": "validation"}


def describe_choice(choice: ThresholdChoice) -> list[str]:
    """What router-train prints about the threshold: the goal, the risk, the method, the certified floor."""
    g = choice.goal
    on = f"{choice.n_labelled} {ROWS_WORDS.get(choice.rows, choice.rows)} rows"
    lines = [
        f"threshold {choice.threshold:.4f} for {g.describe()} (method {choice.method}, chosen on {on}: strong share "
        f"{choice.strong_share:.3f}, quality vs strong {choice.quality_vs_strong:.3f}, met={choice.met})"
    ]
    if g.risk is None:
        lines.append("  no guarantee: the threshold just meets the goal on the labelled rows (--risk none)")
        return lines
    conf = f"{1 - g.risk:.0%}"
    if choice.certified:
        if g.kind == "quality_floor":
            lines.append(f"  certified: with probability >= {conf}, quality on new traffic like this log is >= "
                         f"{g.value:.1%} of always-strong (lower bound at this threshold {choice.bound:.3f})")
        else:
            lines.append(f"  certified: with probability >= {conf}, the mean {g.kind.removeprefix('max_')} on new "
                         f"traffic like this log is <= {g.value:g} (upper bound {choice.bound:.4g})")
        return lines
    if g.kind == "quality_floor":
        need = (f"about {choice.n_needed:,} labelled rows would certify the best gap observed here"
                if choice.n_needed else "no cheap routing observed here keeps the floor at any sample size")
        lines.append(f"  cannot certify any cheap routing at {g.describe()} from {choice.n_labelled} rows: every "
                     f"request goes to the strong model (rules still apply); {need}")
    else:
        lines.append(f"  cannot certify the budget {g.value:g} at risk {g.risk:g} even with every request cheap: "
                     "routing everything to the cheap model (the lowest spend)")
    return lines
