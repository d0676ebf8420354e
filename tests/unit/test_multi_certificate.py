"""The N-model certificate as one fixed sequence over every rule family's points (training/multi/rule.py).

Synthetic and fast: validity on a null where every routing fails the floor, the order depending
on the training rows only, and power beside the earlier union bound over the families.
"""

from __future__ import annotations

import numpy as np
import pytest

import training.multi.rule as rule
from training.multi.rule import MultiGoal, OrderRows, choose_rule, param_grid, sequence_order

MODELS = ("a", "b", "c")
COST = np.array([1.0, 2.0, 10.0])


def _null(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Heads that know nothing; c (the reference) passes 80%, a and b 75%, all independent.

    A routing that sends a share s of requests away from c loses 0.8 x 0.25 - 0.2 x 0.75 = 0.05 s
    of quality: below a floor of 1.0 x c whenever s > 0, so every point but the reference fails.
    """
    passed = np.column_stack([rng.random(n) < 0.75, rng.random(n) < 0.75, rng.random(n) < 0.8]).astype(float)
    p_pass = np.column_stack([rng.random(n), rng.random(n), np.full(n, 0.99)])
    p_ok = np.column_stack([rng.random(n), rng.random(n), np.ones(n)])
    return p_pass, p_ok, np.tile(COST, (n, 1)), passed


def _margin(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """a and b pass the easy 60% of rows, c passes all; the heads are right with some noise."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < 0.6
    passed = np.column_stack([easy, easy, np.ones(n, dtype=bool)]).astype(float)
    pe = np.clip(np.where(easy, 0.9, 0.1) + rng.normal(0, 0.05, n), 0.01, 0.99)
    return (np.column_stack([pe, pe, np.full(n, 0.99)]), np.column_stack([pe, pe, np.ones(n)]),
            np.tile(COST, (n, 1)), passed)


def test_one_sequence_is_valid_on_a_null_where_every_routing_fails() -> None:
    rng = np.random.default_rng(7)
    draws, risk = 200, 0.05  # a procedure that ignored the null would certify on most draws
    goal = MultiGoal("quality_floor", 1.0, risk)
    wrong = 0
    for _ in range(draws):
        tp, tk, te, _ = _null(300, rng)  # training rows: head outputs only
        vp, vk, ve, vy = _null(300, rng)
        ch = choose_rule(vp, vk, ve, passed=vy, cost=ve, models=MODELS, goal=goal, reference=2, lambda_scale=10.0,
                         order_rows=OrderRows(tp, tk, te))
        assert ch.method == "ltt-fixed-sequence-betting-one-sequence"
        wrong += ch.kind != "single"  # anything certified routes some requests away, which fails the floor
    # at most risk, up to three Monte Carlo standard errors
    assert wrong / draws <= risk + 3 * np.sqrt(risk * (1 - risk) / draws)


def test_the_order_depends_on_the_training_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[str, int]]] = []
    real = rule.sequence_order

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(rule, "sequence_order", spy)
    rng = np.random.default_rng(3)
    tp, tk, te, _ = _margin(300, 1)
    vp, vk, ve, vy = _margin(400, 2)
    goal = MultiGoal("quality_floor", 0.95, 0.05)
    flipped = vy.copy()
    flip = rng.random(len(vy)) < 0.3
    flipped[flip, :2] = 1.0 - flipped[flip, :2]  # other validation outcomes, same validation features
    for y in (vy, flipped):
        choose_rule(vp, vk, ve, passed=y, cost=ve, models=MODELS, goal=goal, reference=2, lambda_scale=10.0,
                    order_rows=OrderRows(tp, tk, te))
    assert len(seen) == 2 and seen[0] == seen[1]
    # and it is what the training rows give, with the validation rows nowhere in it
    grids = {k: param_grid(k, ve, 10.0) for k in ("cheapest_ok", "cheapest_pass", "lambda")}
    assert sequence_order("quality_floor", grids, OrderRows(tp, tk, te)) == seen[0]
    # the floor starts from the dearest expected routing, a budget from the cheapest
    budget = sequence_order("max_cost_per_request", grids, OrderRows(tp, tk, te), frontier=False)
    exp = {(k, i): float(te[np.arange(len(te)), rule.choose(k, float(v), tp, tk, te)].mean())
           for k, g in grids.items() for i, v in enumerate(g)}
    costs = [exp[p] for p in budget]
    assert costs == sorted(costs)
    floor_all = sequence_order("quality_floor", grids, OrderRows(tp, tk, te), frontier=False)
    assert [exp[p] for p in floor_all] == sorted(costs, reverse=True)
    assert set(seen[0]) <= set(floor_all) and len(floor_all) == sum(len(g) for g in grids.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sequence_certifies_at_least_as_cheap_as_the_union_bound(seed: int) -> None:
    tp, tk, te, _ = _margin(400, 10 + seed)
    vp, vk, ve, vy = _margin(400, seed)
    kw = dict(passed=vy, cost=ve, models=MODELS, reference=2, lambda_scale=10.0)
    floor = MultiGoal("quality_floor", 0.95, 0.05)
    union = choose_rule(vp, vk, ve, goal=floor, **kw)
    one = choose_rule(vp, vk, ve, goal=floor, order_rows=OrderRows(tp, tk, te), **kw)
    assert union.method.endswith("bonferroni-over-rules") and one.method.endswith("one-sequence")
    assert one.certified is True and one.kind != "single"
    assert one.val_cost_per_request <= union.val_cost_per_request + 1e-12
    assert one.bound is not None and 0.95 <= one.bound <= 1.0
    budget = MultiGoal("max_cost_per_request", 5.0, 0.05)
    ub = choose_rule(vp, vk, ve, goal=budget, **kw)
    ob = choose_rule(vp, vk, ve, goal=budget, order_rows=OrderRows(tp, tk, te), **kw)
    assert ob.certified is True and ob.val_quality >= ub.val_quality - 1e-12
    assert ob.bound is not None and ob.val_cost_per_request <= ob.bound <= 5.0


def test_clopper_pearson_one_sequence_and_no_risk() -> None:
    tp, tk, te, _ = _margin(400, 5)
    vp, vk, ve, vy = _margin(400, 6)
    kw = dict(passed=vy, cost=ve, models=MODELS, reference=2, lambda_scale=10.0, order_rows=OrderRows(tp, tk, te))
    cp = choose_rule(vp, vk, ve, goal=MultiGoal("quality_floor", 0.95, 0.05, "clopper-pearson"), **kw)
    assert cp.method == "ltt-fixed-sequence-clopper-pearson-one-sequence" and cp.certified is True
    hb = choose_rule(vp, vk, ve, goal=MultiGoal("max_cost_per_request", 5.0, 0.05, "clopper-pearson"), **kw)
    assert hb.method == "ltt-fixed-sequence-hoeffding-bentkus-one-sequence"
    emp = choose_rule(vp, vk, ve, goal=MultiGoal("quality_floor", 0.95, None), **kw)  # no risk: order unused
    assert emp.method == "empirical" and emp.val_cost_per_request <= cp.val_cost_per_request + 1e-12
