"""Which model to call, from the per-model probabilities: the rule and its parameter, chosen on validation.

Three rule families (the serving side applies them: `router_model/multi.py`):

* `cheapest_ok`:   the cheapest model whose P(loses nothing against every pricier model) >= t;
* `cheapest_pass`: the cheapest model whose P(pass) >= t (its own pass rate only);
* `lambda`:        the argmax of P(pass) - lambda * expected dollars.

Each family is swept over its parameter on the validation split; the goal picks the point (and so
the family): a quality floor relative to the best single model (default 0.95 of it) at the lowest
cost, or a budget in dollars per request at the highest quality. Which family won, and the
validation AIQ of each, are recorded so the choice can be read back and argued with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router_model.multi import POLICY_KINDS, CostModel, choose
from training.multi.evaluation import aiq, eval_rows, single_points

GOAL_KINDS = ("quality_floor", "max_cost_per_request")


@dataclass(frozen=True)
class MultiGoal:
    """quality_floor: at least `value` x the best single model's quality; max_cost_per_request: USD."""

    kind: str = "quality_floor"
    value: float = 0.95

    def __post_init__(self) -> None:
        if self.kind not in GOAL_KINDS:
            raise ValueError(f"an N-model goal is one of {GOAL_KINDS}, got {self.kind!r} (a strong-call share has no "
                             "meaning among N models)")
        if not (self.value > 0):
            raise ValueError(f"the goal value must be positive, got {self.value}")


def fit_cost_models(n_tokens: np.ndarray, cost: np.ndarray, models: Sequence[str]) -> tuple[CostModel, ...]:
    """Per model, dollars per call ~ intercept + per_token * prompt tokens (least squares, clamped >= 0).

    What serving can know before the call: the prompt's length, not the answer's.
    """
    x = np.asarray(n_tokens, dtype=float)
    out = []
    for j, m in enumerate(models):
        y = cost[:, j]
        if len(x) > 1 and x.std() > 0:
            slope = float(np.cov(x, y, bias=True)[0, 1] / x.var())
            slope = max(slope, 0.0)
            icpt = max(float(y.mean() - slope * x.mean()), 0.0)
        else:
            slope, icpt = 0.0, float(y.mean()) if len(y) else 0.0
        out.append(CostModel(m, icpt, slope, float(y.mean()) if len(y) else 0.0))
    return tuple(out)


def expected_costs(cost_models: Sequence[CostModel], n_tokens: np.ndarray) -> np.ndarray:
    """(n, N) the cost models' dollars per call for each request."""
    return np.column_stack([cm.estimate(np.asarray(n_tokens, dtype=float)) for cm in cost_models])


def param_grid(kind: str, est_cost: np.ndarray) -> np.ndarray:
    """The parameter values a family is swept over."""
    if kind == "lambda":
        scale = float(np.mean(est_cost.max(axis=1))) or 1.0
        return np.concatenate([[0.0], np.logspace(-3, 2.5, 140) / scale, [np.inf]])
    return np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-4, -2, 20)])


@dataclass(frozen=True)
class Sweep:
    """One family's (parameter, cost, quality) points on a set of rows (cost = total dollars)."""

    kind: str
    params: np.ndarray
    cost: np.ndarray
    quality: np.ndarray


def sweep(kind: str, p_pass: np.ndarray, p_ok: np.ndarray, est_cost: np.ndarray, passed: np.ndarray,
          cost: np.ndarray, params: np.ndarray | None = None) -> Sweep:
    """Route every row for each parameter value; quality and dollars are the chosen models' real ones."""
    params = param_grid(kind, est_cost) if params is None else params
    rows = np.arange(len(passed))
    cs, qs = [], []
    for v in params:
        pick = choose(kind, float(v), p_pass, p_ok, est_cost)
        cs.append(float(cost[rows, pick].sum()))
        qs.append(float(passed[rows, pick].mean()) if len(rows) else 0.0)
    return Sweep(kind, np.asarray(params, dtype=float), np.array(cs), np.array(qs))


@dataclass(frozen=True)
class PolicyChoice:
    """The chosen rule and parameter, what it did on validation, and how each family compared there."""

    kind: str
    value: float
    goal: MultiGoal
    met: bool
    val_quality: float
    val_cost_per_request: float
    val_best_single: str
    val_best_single_quality: float
    families: dict[str, dict[str, float]]
    why: str


def choose_policy(
    p_pass: np.ndarray,
    p_ok: np.ndarray,
    est_cost: np.ndarray,
    passed: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    goal: MultiGoal = MultiGoal(),
    kinds: Sequence[str] = POLICY_KINDS,
) -> PolicyChoice:
    """Sweep each family on validation rows (those with every model's outcome); the goal picks the point."""
    keep = eval_rows(passed)
    if keep.sum() == 0:
        raise ValueError("no validation row has an outcome for every model; the policy cannot be chosen")
    P, K, E, Y, C = p_pass[keep], p_ok[keep], est_cost[keep], passed[keep], cost[keep]
    n = len(Y)
    singles = single_points(Y, C, models)
    best = max(singles, key=lambda s: (s["quality"], -s["cost"]))
    c_lo, c_hi = min(s["cost"] for s in singles), max(s["cost"] for s in singles)
    families: dict[str, dict[str, float]] = {}
    candidates: list[tuple[str, float, float, float]] = []  # kind, value, cost, quality
    for kind in kinds:
        sw = sweep(kind, P, K, E, Y, C)
        families[kind] = {"val_aiq": aiq(sw.cost, sw.quality, c_lo, c_hi)}
        candidates += [(kind, float(v), float(c), float(q)) for v, c, q in zip(sw.params, sw.cost, sw.quality)]
    if goal.kind == "quality_floor":
        floor = goal.value * best["quality"]
        ok = [c for c in candidates if c[3] >= floor - 1e-12]
        met = bool(ok)
        pick = min(ok, key=lambda c: (c[2], -c[3])) if ok else max(candidates, key=lambda c: (c[3], -c[2]))
        for kind in kinds:
            fam = [c for c in ok if c[0] == kind]
            families[kind]["val_cost_at_goal"] = min(c[2] for c in fam) / n if fam else float("nan")
        why = (f"lowest validation cost with quality >= {goal.value:g} x {best['name']} ({floor:.3f}): "
               f"{pick[0]} at ${pick[2] / n:.6f}/request")
    else:
        budget = goal.value * n
        ok = [c for c in candidates if c[2] <= budget + 1e-12]
        met = bool(ok)
        pick = max(ok, key=lambda c: (c[3], -c[2])) if ok else min(candidates, key=lambda c: (c[2], -c[3]))
        for kind in kinds:
            fam = [c for c in ok if c[0] == kind]
            families[kind]["val_quality_at_goal"] = max(c[3] for c in fam) if fam else float("nan")
        why = f"highest validation quality within ${goal.value:g}/request: {pick[0]} at quality {pick[3]:.3f}"
    if not met:
        why += " (goal not met on validation; closest point used)"
    return PolicyChoice(pick[0], pick[1], goal, met, pick[3], pick[2] / n, best["name"], best["quality"], families, why)
