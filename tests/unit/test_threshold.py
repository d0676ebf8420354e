"""training.threshold: each goal on hand cases (the empirical rule, risk=None), infeasible goals, speed.

The risk-controlled rule (the default) is tested in tests/unit/test_guarantee.py.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from router_model.errors import ConfigError
from router_model.offline.metrics import evaluate_routing
from training.risk import ALL_STRONG
from training.threshold import DEFAULT_GOAL, Goal, choose_threshold

# Four requests; the cheap model is right on the two it is most confident about.
P = np.array([0.9, 0.8, 0.3, 0.1])
W = np.array([1.0, 1.0, 0.0, 0.0])
S = np.ones(4)
CC, CS = 1.0, 10.0
# Candidates (threshold -> cheap set, quality_vs_strong, strong share, cost/request):
#   >1   -> {}          1.00  1.00  10.00
#   0.85 -> {0}         1.00  0.75   7.75
#   0.55 -> {0,1}       1.00  0.50   5.50
#   0.2  -> {0,1,2}     0.75  0.25   3.25
#   0.0  -> all         0.50  0.00   1.00


def choose(goal: Goal):
    """The empirical rule on the four hand rows (no risk: 4 rows can certify nothing)."""
    return choose_threshold(P, W, S, cost_cheap=CC, cost_strong=CS, goal=replace(goal, risk=None))


def test_default_goal_is_risk_controlled() -> None:
    assert DEFAULT_GOAL == Goal.quality_floor(0.95) == Goal("quality_floor", 0.95) == Goal("quality_floor", 0.95, 0.05)
    assert DEFAULT_GOAL.risk == 0.05


def test_quality_floor() -> None:
    c = choose(Goal.quality_floor(0.95))
    assert c.met and c.threshold == pytest.approx(0.55)
    assert (c.strong_share, c.quality_vs_strong, c.cost_per_request) == (0.5, 1.0, 5.5)
    assert c.cost_saved_fraction == pytest.approx(0.45)
    assert choose(Goal.quality_floor(0.7)).threshold == pytest.approx(0.2)
    assert choose(Goal.quality_floor(0.5)).threshold == 0.0


def test_quality_floor_infeasible_goes_all_strong() -> None:
    c = choose(Goal.quality_floor(1.2))
    assert not c.met and c.threshold == ALL_STRONG > 1.0 and c.strong_share == 1.0


def test_max_strong_share() -> None:
    c = choose(Goal.max_strong_share(0.3))
    assert c.met and c.threshold == pytest.approx(0.2) and c.strong_share == 0.25
    # Quality tie between 0.5, 0.75 and 1.0 share: the cheapest of the best wins.
    assert choose(Goal.max_strong_share(1.0)).threshold == pytest.approx(0.55)
    c0 = choose(Goal.max_strong_share(0.0))
    assert c0.met and c0.threshold == 0.0 and c0.strong_share == 0.0


def test_max_cost_per_request() -> None:
    c = choose(Goal.max_cost_per_request(6.0))
    assert c.met and c.threshold == pytest.approx(0.55) and c.cost_per_request == 5.5
    assert choose(Goal.max_cost_per_request(3.5)).threshold == pytest.approx(0.2)


def test_max_cost_infeasible_goes_cheapest() -> None:
    c = choose(Goal.max_cost_per_request(0.5))
    assert not c.met and c.threshold == 0.0 and c.cost_per_request == 1.0


def test_serving_rule_matches_choice_and_per_row_costs() -> None:
    rng = np.random.default_rng(0)
    n = 500
    p = rng.random(n)
    w = (rng.random(n) < p).astype(float)
    s = (rng.random(n) < 0.9).astype(float)
    cc, cs = rng.uniform(0.1, 1, n), rng.uniform(5, 10, n)
    goals = [Goal.quality_floor(0.97), Goal.max_strong_share(0.4), Goal.max_cost_per_request(4.0)]
    for goal in goals + [replace(g, risk=None) for g in goals]:
        c = choose_threshold(p, w, s, cost_cheap=cc, cost_strong=cs, goal=goal)
        res = evaluate_routing(~(p >= c.threshold), w, s, cost_cheap=cc, cost_strong=cs)
        assert res.strong_share == pytest.approx(c.strong_share)
        assert res.quality_vs_strong == pytest.approx(c.quality_vs_strong)
        assert res.cost_per_request == pytest.approx(c.cost_per_request)
        assert res.cost_saved_fraction == pytest.approx(c.cost_saved_fraction)


def test_tied_probabilities_only_all_or_nothing() -> None:
    c = choose_threshold(np.full(4, 0.5), W, S, cost_cheap=CC, cost_strong=CS, goal=Goal.quality_floor(0.6, risk=None))
    assert c.threshold == ALL_STRONG and c.met and c.strong_share == 1.0
    c = choose_threshold(np.full(4, 0.5), W, S, cost_cheap=CC, cost_strong=CS, goal=Goal.quality_floor(0.5, risk=None))
    assert c.threshold == 0.0 and c.met


def test_fast_on_100k_rows() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    p = rng.random(n)
    w = (rng.random(n) < p).astype(float)
    s = np.ones(n)
    t0 = time.perf_counter()
    choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.95, risk=None))
    choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.95))
    choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=np.linspace(0.5, 1.5, n), goal=Goal.max_cost_per_request(0.9))
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    ("kind", "value"),
    [("quality_floor", 0.0), ("quality_floor", 1.6), ("max_strong_share", -0.1), ("max_strong_share", 1.1),
     ("max_cost_per_request", 0.0), ("quality_floor", float("nan")), ("cheapest", 1.0)],
)
def test_goal_validation(kind: str, value: float) -> None:
    with pytest.raises(ConfigError):
        Goal(kind, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("risk", [0.0, 1.0, -0.1, float("nan"), True])
def test_risk_validation(risk: float) -> None:
    with pytest.raises(ConfigError, match="risk must be a probability"):
        Goal.quality_floor(0.95, risk)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        choose_threshold(P, W[:3], S, cost_cheap=CC, cost_strong=CS)
    with pytest.raises(ValueError):
        choose_threshold(P + 1, W, S, cost_cheap=CC, cost_strong=CS)
    with pytest.raises(ValueError):
        choose_threshold(np.array([]), [], [], cost_cheap=CC, cost_strong=CS)
