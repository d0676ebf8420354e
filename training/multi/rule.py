"""Which model to call, from the per-model probabilities: the rule and its parameter, chosen on validation.

Three rule families (the serving side applies them: `router_model/multi.py`):

* `cheapest_ok`:   the cheapest model whose P(loses nothing against every pricier model) >= t;
* `cheapest_pass`: the cheapest model whose P(pass) >= t (its own pass rate only);
* `lambda`:        the argmax of P(pass) - lambda * expected dollars.

Each family is swept over its parameter on the validation split; the goal picks the point (and so
the family): a quality floor relative to the reference model (the best single model on the
training rows; default 0.95 of it) at the lowest cost, or a budget in dollars per request at the
highest quality. Which family won, and the validation AIQ of each, are recorded so the choice can
be read back and argued with.

With a risk (the default, 0.05) the point must be certified, as the two-model threshold is
(training/risk.py, docs/guarantee.md). With `order_rows` (the training rows' head outputs and
expected dollars; what `training/multi/pipeline.py` passes) every (family, parameter) point of
every family is put in ONE fixed sequence, ordered by its expected cost on those rows from the
safe end (quality floor: priciest first; budget: cheapest first), keeping by default only the
points on those rows' predicted cost/quality frontier, and tested in that order at the full risk,
stopping at the first point not certified (`ltt-fixed-sequence-...-one-sequence`). The
order uses no validation outcome, so fixed-sequence testing keeps the chance of certifying any
failing point at most the risk. Without `order_rows` each family's grid is tested in its own
order at risk / number of families (the earlier union bound, `...-bonferroni-over-rules`). Only
certified points are eligible. When nothing is certified, every request goes to the reference
model (floor) or the cheapest model (budget), the `single` rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from router_model.multi import RULE_FAMILIES, SINGLE, CostModel, choose
from router_model.offline.multi_evaluation import aiq, eval_rows, single_points
from training.risk import (
    CERTIFICATES,
    DEFAULT_CERTIFICATE,
    METHOD,
    METHOD_BETTING,
    betting_budget_bound,
    betting_budget_sequence,
    betting_floor_bound,
    betting_floor_sequence,
    betting_n_needed,
    budget_sequence,
    effective_certificate,
    floor_sequence,
    last_before_failure,
    n_needed,
    quality_lower_bound,
)
from training.threshold import DEFAULT_RISK, EMPIRICAL

GOAL_KINDS = ("quality_floor", "max_cost_per_request")


@dataclass(frozen=True)
class MultiGoal:
    """quality_floor: at least `value` x the reference model's quality; max_cost_per_request: USD.

    `risk`: the allowed chance that the goal fails on new traffic (None: met on validation only).
    `certificate`: as for a pair (training/risk.py); "exact" (the default) runs the betting test here.
    """

    kind: str = "quality_floor"
    value: float = 0.95
    risk: float | None = DEFAULT_RISK
    certificate: str = DEFAULT_CERTIFICATE

    def __post_init__(self) -> None:
        if self.kind not in GOAL_KINDS:
            raise ValueError(f"an N-model goal is one of {GOAL_KINDS}, got {self.kind!r} (a strong-call share has no "
                             "meaning among N models)")
        if not (self.value > 0):
            raise ValueError(f"the goal value must be positive, got {self.value}")
        if self.certificate not in CERTIFICATES:
            raise ValueError(f"certificate must be one of {CERTIFICATES}, got {self.certificate!r}")
        if self.risk is not None and not (0.0 < self.risk < 1.0):
            raise ValueError(f"risk must be a probability in (0, 1) or None, got {self.risk!r}")


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


def reference_model(passed: np.ndarray, cost: np.ndarray) -> int:
    """The column the floor is relative to: the best pass rate over the rows with its outcome (NaN
    masked), the cheaper on a tie. Chosen on training rows, it is fixed before validation is seen."""
    with np.errstate(invalid="ignore"):
        rate = np.nanmean(passed, axis=0)
        mean_cost = np.nanmean(np.where(np.isnan(passed), np.nan, cost), axis=0)
    rate = np.where(np.isnan(rate), -1.0, rate)
    return int(max(range(passed.shape[1]), key=lambda j: (rate[j], -mean_cost[j])))


def expected_costs(cost_models: Sequence[CostModel], n_tokens: np.ndarray) -> np.ndarray:
    """(n, N) the cost models' dollars per call for each request."""
    return np.column_stack([cm.estimate(np.asarray(n_tokens, dtype=float)) for cm in cost_models])


def param_grid(kind: str, est_cost: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The parameter values a family is swept over, from the priciest routing to the cheapest.

    lambda is scaled by a typical dollar figure: `scale`, or the mean of each row's priciest
    estimate. (A certified sweep passes a scale from the training rows, so the grid is fixed
    before the validation outcomes are seen.)
    """
    if kind == "lambda":
        scale = scale or float(np.mean(est_cost.max(axis=1))) or 1.0
        return np.concatenate([[0.0], np.logspace(-3, 2.5, 140) / scale, [np.inf]])
    return np.sort(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-4, -2, 20)]))[::-1]


@dataclass(frozen=True)
class Sweep:
    """One family's (parameter, cost, quality) points on a set of rows (cost = total dollars), and the
    column each point picks per row (what the risk-controlled choice counts losses and gains on)."""

    kind: str
    params: np.ndarray
    cost: np.ndarray
    quality: np.ndarray
    picks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # (len(params), rows)


def sweep(kind: str, p_pass: np.ndarray, p_ok: np.ndarray, *, est_cost: np.ndarray, passed: np.ndarray,
          cost: np.ndarray, params: np.ndarray | None = None) -> Sweep:
    """Route every row for each parameter value; quality and dollars are the chosen models' real ones."""
    params = param_grid(kind, est_cost) if params is None else params
    rows = np.arange(len(passed))
    picks = np.array([choose(kind, float(v), p_pass, p_ok, est_cost) for v in params]).reshape(len(params), len(rows))
    cs = cost[rows, picks].sum(axis=1).astype(float)
    qs = passed[rows, picks].mean(axis=1).astype(float) if len(rows) else np.zeros(len(params))
    return Sweep(kind, np.asarray(params, dtype=float), cs, qs, picks)


@dataclass(frozen=True)
class RuleChoice:
    """The chosen rule and parameter, what it did on validation, how each family compared there, and
    (risk-controlled) what was certified."""

    kind: str
    value: float
    goal: MultiGoal
    met: bool
    val_quality: float
    val_cost_per_request: float
    val_best_single: str  # the reference model: the floor is relative to it, rules route to it
    val_best_single_quality: float
    families: dict[str, dict[str, float]]
    why: str
    method: str = EMPIRICAL
    certified: bool | None = None
    bound: float | None = None  # floor: lower bound on quality / reference; budget: upper bound, $/request
    n_labelled: int = 0
    n_needed: int | None = None


@dataclass(frozen=True)
class _Point:
    kind: str
    value: float
    cost: float  # total dollars on the validation rows
    quality: float
    certified: bool = False
    bound: float = float("nan")


@dataclass(frozen=True)
class OrderRows:
    """Head outputs and expected dollars on rows that are not tested (the training rows): what the
    single fixed sequence is ordered by. No outcome of the tested rows enters it."""

    p_pass: np.ndarray
    p_ok: np.ndarray
    est_cost: np.ndarray


def sequence_order(goal_kind: str, grids: dict[str, np.ndarray], order_rows: OrderRows, *,
                   frontier: bool = True) -> list[tuple[str, int]]:
    """Every (family, parameter index) point in one fixed order, from the safe end.

    On `order_rows` (features and head outputs only, no outcome), each point's expected cost is the
    mean of the expected dollars of the model it picks, and its predicted quality the mean of that
    model's P(pass). Floor: the highest expected cost first (toward the reference); budget: the
    lowest first. Ties keep the family order and the grid order. `frontier`: drop the points another
    point beats on those rows (no dearer and no worse, one of them strictly), so a family's weak
    point does not stop the sequence before a better family's next one; dropped points are neither
    tested nor served.
    """
    if goal_kind not in GOAL_KINDS:
        raise ValueError(f"an N-model goal is one of {GOAL_KINDS}, got {goal_kind!r}")
    P, K, E = (np.asarray(a, dtype=float) for a in (order_rows.p_pass, order_rows.p_ok, order_rows.est_cost))
    rows = np.arange(len(E))
    keys: list[tuple[float, int, int, str]] = []
    exp_q: list[float] = []
    for f, (kind, params) in enumerate(grids.items()):
        for i, v in enumerate(params):
            pick = choose(kind, float(v), P, K, E)
            exp = float(E[rows, pick].mean()) if len(rows) else 0.0
            exp_q.append(float(P[rows, pick].mean()) if len(rows) else 0.0)
            keys.append((-exp if goal_kind == "quality_floor" else exp, f, i, kind))
    if frontier and keys:
        c = np.array([abs(k[0]) for k in keys])
        q = np.array(exp_q)
        no_worse = (c[None, :] <= c[:, None]) & (q[None, :] >= q[:, None])
        better = (c[None, :] < c[:, None]) | (q[None, :] > q[:, None])
        beaten = np.any(no_worse & better, axis=1).astype(bool).tolist()
        keys = [k for k, x in zip(keys, list(beaten)) if not x]
    keys.sort(key=lambda k: (k[0], k[1], k[2]))
    return [(kind, i) for _, _, i, kind in keys]


def choose_rule(
    p_pass: np.ndarray,
    p_ok: np.ndarray,
    est_cost: np.ndarray,
    *,
    passed: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    goal: MultiGoal = MultiGoal(),
    kinds: Sequence[str] = RULE_FAMILIES,
    reference: int | None = None,
    lambda_scale: float | None = None,
    order_rows: OrderRows | None = None,
    frontier: bool = True,
) -> RuleChoice:
    """Sweep each family on validation rows (those with every model's outcome); the goal picks the point.

    `reference`: the column the floor is relative to (default: the best single model on these
    rows; a certified floor should pass one chosen on other rows, e.g. the training split).
    `order_rows`: with a risk, test every point of every family in one fixed sequence ordered on
    these (training) rows, at the full risk; None: the union bound over families (risk / families).
    `frontier`: the sequence keeps only the points on those rows' predicted frontier (`sequence_order`).
    """
    keep = eval_rows(passed)
    if keep.sum() == 0:
        raise ValueError("no validation row has an outcome for every model; the serving rule cannot be chosen")
    P, K, E, Y, C = p_pass[keep], p_ok[keep], est_cost[keep], passed[keep], cost[keep]
    n = len(Y)
    singles = single_points(Y, C, models)
    if reference is None:
        reference = max(range(len(models)), key=lambda j: (singles[j]["quality"], -singles[j]["cost"]))
    ref = singles[reference]
    c_lo, c_hi = min(s["cost"] for s in singles), max(s["cost"] for s in singles)
    families: dict[str, dict[str, float]] = {}
    rows = np.arange(n)
    one = goal.risk is not None and order_rows is not None
    fam_risk = None if goal.risk is None else (goal.risk if one else goal.risk / len(kinds))
    order: list[tuple[str, int]] = []
    sweeps = {kind: sweep(kind, P, K, est_cost=E, passed=Y, cost=C, params=param_grid(kind, E, lambda_scale))
              for kind in kinds}
    for kind, sw in sweeps.items():
        families[kind] = {"val_aiq": aiq(sw.cost, sw.quality, c_min=c_lo, c_max=c_hi)}
    if fam_risk is None:
        points = [_Point(kind, float(v), c, q) for kind, sw in sweeps.items()
                  for v, c, q in zip(sw.params, sw.cost, sw.quality)]
        need: list[int] = []
        rows_of: dict[tuple[str, float], np.ndarray] = {}
    elif one:
        assert order_rows is not None
        order = sequence_order(goal.kind, {k: sw.params for k, sw in sweeps.items()}, order_rows, frontier=frontier)
        points, need, rows_of = _certify_sequences(
            [order], sweeps, Y, C, rows, reference=reference, goal=goal, risk=fam_risk, skip_safe=False)
    else:
        # each family's grid runs from the priciest routing to the cheapest: a budget reads it backwards
        back = goal.kind != "quality_floor"
        seqs = [[(kind, i) for i in (range(len(sw.params))[::-1] if back else range(len(sw.params)))]
                for kind, sw in sweeps.items()]
        points, need, rows_of = _certify_sequences(
            seqs, sweeps, Y, C, rows, reference=reference, goal=goal, risk=fam_risk, skip_safe=True)
    if goal.kind == "quality_floor":
        floor = goal.value * ref["quality"]
        ok = points if fam_risk is not None else [c for c in points if c.quality >= floor - 1e-12]
        pick = min(ok, key=lambda c: (c.cost, -c.quality)) if ok else None
        for kind in kinds:
            fam = [c for c in ok if c.kind == kind]
            families[kind]["val_cost_at_goal"] = min(c.cost for c in fam) / n if fam else float("nan")
        what = (f"quality >= {goal.value:g} x {ref['name']} certified at risk {goal.risk:g}" if fam_risk is not None
                else f"quality >= {goal.value:g} x {ref['name']} ({floor:.3f})")
    else:
        budget = goal.value * n
        ok = points if fam_risk is not None else [c for c in points if c.cost <= budget + 1e-12]
        pick = max(ok, key=lambda c: (c.quality, -c.cost)) if ok else None
        for kind in kinds:
            fam = [c for c in ok if c.kind == kind]
            families[kind]["val_quality_at_goal"] = max(c.quality for c in fam) if fam else float("nan")
        what = (f"spend <= ${goal.value:g}/request certified at risk {goal.risk:g}" if fam_risk is not None
                else f"spend <= ${goal.value:g}/request")
    if pick is None and fam_risk is not None:
        col = reference if goal.kind == "quality_floor" else 0
        q, c = float(Y[:, col].mean()), float(C[:, col].sum())
        where = "the reference" if goal.kind == "quality_floor" else "the cheapest model"
        need_txt = f"; about {min(need):,} validation rows would certify the best gap seen" if need else ""
        why = f"nothing certified ({what}): every request to {where}, {models[col]}{need_txt}"
        return RuleChoice(SINGLE, float(col), goal, False, q, c / n, ref["name"], ref["quality"], families, why,
                            method=_method(goal, one), certified=False, bound=None, n_labelled=n,
                            n_needed=min(need) if need else None)
    met = pick is not None
    if pick is None:  # empirical and not met: the closest point
        pick = (max(points, key=lambda c: (c.quality, -c.cost)) if goal.kind == "quality_floor"
                else min(points, key=lambda c: (c.cost, -c.quality)))
    if goal.kind == "quality_floor":
        why = f"lowest validation cost with {what}: {pick.kind} at ${pick.cost / n:.6f}/request"
    else:
        why = f"highest validation quality with {what}: {pick.kind} at quality {pick.quality:.3f}"
    if not met:
        why += " (goal not met on validation; closest point used)"
    if one:
        why += (f" (one fixed sequence over {len(order)} of {sum(len(sw.params) for sw in sweeps.values())} points, "
                "ordered on the training rows)")
    bound = pick.bound if fam_risk is not None else None
    if fam_risk is not None and bound is not None and np.isnan(bound):  # betting: the served point's bound
        row = rows_of[(pick.kind, pick.value)]
        if goal.kind == "quality_floor":
            bound = (1.0 if not row.any() else
                     betting_floor_bound(row, (Y[:, reference] >= 0.5).astype(float), floor=goal.value, risk=fam_risk))
        else:
            bound = betting_budget_bound(row, float(C.max()), goal.value, risk=fam_risk)
    return RuleChoice(pick.kind, pick.value, goal, met, pick.quality, pick.cost / n, ref["name"], ref["quality"],
                        families, why, method=_method(goal, one), certified=True if fam_risk is not None else None,
                        bound=bound, n_labelled=n)


def _certify_sequences(
    seqs: list[list[tuple[str, int]]], sweeps: dict[str, Sweep], Y: np.ndarray, C: np.ndarray, rows: np.ndarray, *,
    reference: int, goal: MultiGoal, risk: float, skip_safe: bool,
) -> tuple[list[_Point], list[int], dict[tuple[str, float], np.ndarray]]:
    """Test each sequence of (family, parameter index) points, safest first, at `risk` each.

    One sequence (every point of every family, in an order fixed on other rows) at the full risk,
    or one per family at risk / families (the union bound). Returns the certified points, the
    planning estimates of rows needed, and (betting) each certified point's per-row quantity.
    `skip_safe` (the union-bound path, as before): leading points that route every tested row to
    the reference are not tested. The single sequence tests them too (Z = -(1 - F) x [reference
    passes] there), so which points are tested does not depend on the tested rows either.
    """
    n = len(Y)
    points: list[_Point] = []
    need: list[int] = []
    rows_of: dict[tuple[str, float], np.ndarray] = {}
    betting = effective_certificate(goal.certificate, kind="n_models") == "betting"
    for seq in seqs:
        picks = (np.stack([sweeps[k].picks[i] for k, i in seq]) if seq
                 else np.zeros((0, n), dtype=np.int64))  # (points, rows)
        par = np.array([float(sweeps[k].params[i]) for k, i in seq])
        cs = np.array([float(sweeps[k].cost[i]) for k, i in seq])
        qs = np.array([float(sweeps[k].quality[i]) for k, i in seq])
        kinds = [k for k, _ in seq]
        if goal.kind == "quality_floor":
            yr = Y[:, reference] >= 0.5
            yp = Y[rows, picks] >= 0.5  # (points, rows): the picked model passes
            kp = (yr & ~yp).sum(axis=1).astype(float)  # the reference passes, the pick fails
            km = (~yr & yp).sum(axis=1).astype(float)  # the pick passes where the reference fails
            ks = float(yr.sum())
            some = (picks != reference).any(axis=1)
            if betting:
                dz = (yr & ~yp).astype(float) - (~yr & yp).astype(float)  # loss - gain against the reference
                last, _ = betting_floor_sequence(_rows_slice(dz), len(seq), yr.astype(float), floor=goal.value,
                                                 risk=risk, safe=~some if skip_safe else None)
                lb = np.full(last + 1, np.nan)  # computed for the served point only
                rows_of.update({(kinds[i], par[i]): dz[i] for i in range(last + 1)})
            else:
                last, _ = floor_sequence(kp, km, ks, n=n, floor=goal.value, risk=risk)
                lb = quality_lower_bound(kp[: last + 1], km[: last + 1], ks, n=n, risk=risk)
            # (betting: points that route every row to the reference are not tested, and not served either)
            points += [_Point(kinds[i], par[i], cs[i], qs[i], True, float(lb[i]))
                       for i in range(last + 1) if some[i] or not betting]
            need_of = betting_n_needed if betting else n_needed
            nn = need_of(some, kp / n, km / n, rate_s=ks / n, floor=goal.value, risk=risk)
            if nn is not None:
                need.append(nn)
        else:
            cap = float(C.max())
            spend = C[rows, picks]  # (points, rows), cheapest first
            if betting:
                last = betting_budget_sequence(_rows_slice(spend), len(seq), n, cap, goal.value, risk=risk)
                up = np.full(last + 1, np.nan)  # computed for the served point only
                rows_of.update({(kinds[i], par[i]): spend[i] for i in range(last + 1)})
            else:
                up, _ = budget_sequence(cs, n, cap, risk=risk, binary=False)
                last = last_before_failure(up <= goal.value + 1e-12)
            points += [_Point(kinds[i], par[i], cs[i], qs[i], True, float(up[i])) for i in range(last + 1)]
    return points, need, rows_of


def _rows_slice(a: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """The (points, rows) matrix as the betting sequence reads it: points i..j-1."""
    return lambda i, j: a[i:j]


def _method(goal: MultiGoal, one: bool = False) -> str:
    if goal.risk is None:
        return EMPIRICAL
    tail = "one-sequence" if one else "bonferroni-over-rules"
    if effective_certificate(goal.certificate, kind="n_models") == "betting":
        return f"{METHOD_BETTING}-{tail}"
    return (f"{METHOD}-{tail}" if goal.kind == "quality_floor"
            else f"ltt-fixed-sequence-hoeffding-bentkus-{tail}")
