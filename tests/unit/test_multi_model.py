"""N-model routing (issue 16): masking, the policy, RouterBench's frontier/AIQ, on hand-made numbers.

Fitting the heads (sklearn) and the N-model artifact trained on real data, and served, are
tests/integration/test_multi_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from router_model.multi import CostModel, choose
from router_model.offline.multi_evaluation import aiq, evaluate_multi, hull, oracle_point
from training.multi.heads import ok_labels
from training.multi.rule import MultiGoal, Sweep, choose_rule

# ------------------------------------------------------------------ masking


def test_ok_labels_mask_what_cannot_be_known() -> None:
    nan = np.nan
    passed = np.array([
        [1, 0, 0],      # cheapest passes: ok
        [0, 1, nan],    # a pricier model passes: not ok
        [0, 0, nan],    # cheapest and middle fail, priciest unknown: unknowable
        [0, 0, 0],      # nobody passes: ok (the cheapest loses nothing)
        [nan, 1, 1],    # no outcome of its own: masked
    ], dtype=float)
    ok = ok_labels(passed)
    assert ok[:, 0].tolist()[:4] == [1.0, 0.0, pytest.approx(nan, nan_ok=True), 1.0]
    assert np.isnan(ok[2, 0]) and np.isnan(ok[4, 0])
    assert ok[1, 1] == 1.0 and np.isnan(ok[2, 1])  # middle: passes / fails with the priciest unknown
    assert ok[3, 2] == 1.0  # the priciest is ok whenever its outcome is known


# ------------------------------------------------------------------ policy


def test_choose_rules_on_hand_probabilities() -> None:
    p_pass = np.array([[0.9, 0.95, 0.99], [0.2, 0.6, 0.9], [0.1, 0.2, 0.3]])
    p_ok = np.array([[0.95, 0.97, 1.0], [0.3, 0.7, 1.0], [0.8, 0.9, 1.0]])
    est = np.array([[1.0, 2.0, 10.0]] * 3)
    assert choose("cheapest_ok", 0.75, p_pass, p_ok, est).tolist() == [0, 2, 0]  # row 3: hard for all -> cheap
    assert choose("cheapest_pass", 0.75, p_pass, p_ok, est).tolist() == [0, 2, 2]
    assert choose("lambda", 0.0, p_pass, p_ok, est).tolist() == [2, 2, 2]
    assert choose("lambda", np.inf, p_pass, p_ok, est).tolist() == [0, 0, 0]
    assert choose("lambda", 0.06, p_pass, p_ok, est).tolist() == [0, 1, 1]
    # candidates: without the priciest model, a row no allowed model clears goes to the best allowed P(pass)
    assert choose("cheapest_ok", 0.75, p_pass, p_ok, est, allowed=[True, True, False]).tolist() == [0, 1, 0]


def test_policy_picks_lowest_cost_meeting_the_floor() -> None:
    # Three models; the cheap one passes only the "easy" rows, which the heads know exactly.
    n = 200
    easy = np.arange(n) < 120
    passed = np.column_stack([easy.astype(float), easy.astype(float), np.ones(n)])
    cost = np.column_stack([np.full(n, 1.0), np.full(n, 2.0), np.full(n, 10.0)])
    p_pass = np.column_stack([np.where(easy, 0.95, 0.05), np.where(easy, 0.95, 0.05), np.full(n, 0.99)])
    p_ok = np.column_stack([np.where(easy, 0.95, 0.05), np.where(easy, 0.95, 0.05), np.ones(n)])
    choice = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=("a", "b", "c"),
                           goal=MultiGoal("quality_floor", 0.95, None))
    assert choice.met and choice.val_best_single == "c" and choice.method == "empirical"
    # easy rows -> a, the rest -> c: quality 1.0 at (120 * 1 + 80 * 10) / 200 = $4.6 per request
    assert choice.val_quality == 1.0
    assert choice.val_cost_per_request == pytest.approx(4.6)
    budget = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=("a", "b", "c"),
                           goal=MultiGoal("max_cost_per_request", 1.0, None))
    assert budget.val_cost_per_request <= 1.0 and budget.val_quality == pytest.approx(0.6)


def _three_models(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """a and b pass the easy 60% of rows, c passes all; the heads are right with some noise."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.6
    passed = np.column_stack([easy.astype(float), easy.astype(float), np.ones(n)])
    cost = np.column_stack([np.full(n, 1.0), np.full(n, 2.0), np.full(n, 10.0)])
    noise = rng.normal(0, 0.05, n)
    pe = np.clip(np.where(easy, 0.9, 0.1) + noise, 0.01, 0.99)
    p_pass = np.column_stack([pe, pe, np.full(n, 0.99)])
    p_ok = np.column_stack([pe, pe, np.ones(n)])
    return p_pass, p_ok, cost, passed


def test_risk_controlled_policy_certifies_or_falls_back_to_the_reference() -> None:
    p_pass, p_ok, cost, passed = _three_models(400)
    models = ("a", "b", "c")
    choice = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=models,
                           goal=MultiGoal("quality_floor", 0.95, 0.05),
                           reference=2)
    # 400 rows certify routing the easy rows cheap: the lower bound on quality / c clears the floor
    assert choice.certified is True and choice.kind != "single"
    assert choice.bound is not None and 0.95 <= choice.bound <= 1.0
    assert choice.val_cost_per_request < 10.0 * 0.8 and choice.method.startswith("ltt-fixed-sequence")
    # the empirical rule on the same rows is at least as cheap: the guarantee costs something, never saves
    emp = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=models,
                        goal=MultiGoal("quality_floor", 0.95, None), reference=2)
    assert emp.val_cost_per_request <= choice.val_cost_per_request + 1e-9
    # 25 rows cannot certify anything: every request to the reference, and how many rows would
    small = choose_rule(p_pass[:25], p_ok[:25], cost[:25], passed=passed[:25], cost=cost[:25], models=models,
                          goal=MultiGoal("quality_floor", 0.95, 0.05), reference=2)
    assert small.kind == "single" and small.value == 2.0 and small.certified is False
    assert small.n_needed is not None and small.n_needed > 25
    assert choose("single", small.value, p_pass[:3], p_ok[:3], cost[:3]).tolist() == [2, 2, 2]
    assert "nothing certified" in small.why and f"{small.n_needed:,}" in small.why


def test_risk_controlled_budget_is_an_upper_bound() -> None:
    p_pass, p_ok, cost, passed = _three_models(400, seed=1)
    models = ("a", "b", "c")
    b = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=models,
                      goal=MultiGoal("max_cost_per_request", 5.0, 0.05))
    assert b.certified is True and b.bound is not None and b.val_cost_per_request <= b.bound <= 5.0
    emp = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=models,
                        goal=MultiGoal("max_cost_per_request", 5.0, None))
    assert emp.val_quality >= b.val_quality - 1e-9  # the empirical rule may spend up to the budget itself
    # a budget at the cheapest model's own price cannot be certified with a margin: all to the cheapest
    tight = choose_rule(p_pass, p_ok, cost, passed=passed, cost=cost, models=models,
                          goal=MultiGoal("max_cost_per_request", 1.0, 0.05))
    assert tight.kind == "single" and tight.value == 0.0 and tight.certified is False


# ------------------------------------------------------------------ frontier and AIQ


def test_hull_and_aiq_on_a_hand_computed_frontier() -> None:
    cost = [1.0, 1.5, 2.0, 3.0, 4.0]
    quality = [0.5, 0.55, 0.8, 0.7, 0.9]
    hc, hq = hull(cost, quality)
    # (3, 0.7) is dominated (dearer than (2, 0.8) and worse); (1.5, 0.55) lies under the chord 1 -> 2 (0.65).
    assert hc.tolist() == [1.0, 2.0, 4.0] and hq.tolist() == [0.5, 0.8, 0.9]
    # area: (0.5 + 0.8) / 2 * 1 + (0.8 + 0.9) / 2 * 2 = 2.35 over the cost range 3
    assert aiq(cost, quality, c_min=1.0, c_max=4.0) == pytest.approx(2.35 / 3)
    # below the cheapest measured point the hull is 0; after the best one it is flat
    assert aiq(cost, quality, c_min=0.0, c_max=4.0) == pytest.approx(2.35 / 4)
    assert aiq(cost, quality, c_min=1.0, c_max=6.0) == pytest.approx((2.35 + 2 * 0.9) / 5)


def test_frontier_report_singles_oracle_and_router() -> None:
    passed = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], dtype=float)
    cost = np.array([[1, 4], [1, 4], [1, 4], [1, 4]], dtype=float)
    o = oracle_point(passed, cost)
    assert o == {"cost": 1 + 4 + 1 + 1, "quality": 0.75}  # row 3: nobody passes -> the cheapest
    sweep = Sweep("lambda", np.array([0.0, 1.0]), np.array([4.0, 7.0]), np.array([0.5, 0.75]))
    rep = evaluate_multi(("cheap", "strong"), passed, cost, router_sweeps={"r": sweep}, chosen=None)
    assert rep["best_single"]["name"] == "cheap" and rep["best_single"]["quality"] == 0.5  # tie: the cheaper one
    assert rep["routers"]["r"]["cost_at_best_quality_points"] == pytest.approx(1.0)
    assert rep["random"]["quality"] == pytest.approx(0.5)


def test_cost_model_estimates_dollars_from_tokens() -> None:
    cm = CostModel("m", 0.001, 2e-6, 0.002)
    assert cm.estimate(500) == pytest.approx(0.002)
    assert CostModel.from_dict(cm.to_dict()) == cm
