"""router_model.offline.metrics (and training.evaluate.baselines): hand-computed cases, tie handling, orderings, errors."""

from __future__ import annotations

import numpy as np
import pytest

from router_model.offline.metrics import (
    apgr,
    auc,
    brier,
    cpt,
    ece,
    evaluate_routing,
    pgr_curve,
    quality_curve,
    reliability_bins,
)
from training.evaluate.baselines import heuristic_scores, oracle_scores, random_scores

# Hand example, 4 prompts:
#   w = [0, 0, 1, 1], s = [1, 1, 1, 0]  -> q_weak = 0.5, q_strong = 0.75, gap = 0.25
#   gain s - w = [1, 1, 0, -1]
#   router r = [0.9, 0.2, 0.5, 0.1] sends to strong in order 0, 2, 1, 3
#   cumulative gain at k = 0..4: 0, 1, 1, 2, 1;  PGR(k/4) = gain / (4 * 0.25) = 0, 1, 1, 2, 1
#   APGR = 0.25 * ((0+1)/2 + (1+1)/2 + (1+2)/2 + (2+1)/2) = 0.25 * 4.5 = 1.125
#   CPT(50%): PGR goes 0 -> 1 on [0, 0.25], so x = 0.125;  CPT(80%) = 0.2
#   CPT(150%): PGR goes 1 -> 2 on [0.5, 0.75], so x = 0.625;  CPT(250%) is never reached
W = np.array([0.0, 0.0, 1.0, 1.0])
S = np.array([1.0, 1.0, 1.0, 0.0])
R = np.array([0.9, 0.2, 0.5, 0.1])


def test_hand_example_apgr_cpt_curves() -> None:
    assert apgr(R, W, S) == pytest.approx(1.125, abs=1e-12)
    assert cpt(R, W, S, pct=50) == pytest.approx(0.125)
    assert cpt(R, W, S, pct=80) == pytest.approx(0.2)
    assert cpt(R, W, S, pct=100) == pytest.approx(0.25)
    assert cpt(R, W, S, pct=150) == pytest.approx(0.625)
    assert cpt(R, W, S, pct=0) == 0.0
    assert np.isnan(cpt(R, W, S, pct=250))
    x, q = quality_curve(R, W, S, n_points=5)
    assert np.allclose(x, [0, 0.25, 0.5, 0.75, 1])
    assert np.allclose(q, [0.5, 0.75, 0.75, 1.0, 0.75])
    x, p = pgr_curve(R, W, S, n_points=9)
    assert np.allclose(p, [0, 0.5, 1, 1, 1, 1.5, 2, 1.5, 1])  # fractional k: linear in between


def test_ties_are_expected_over_random_tie_breaking() -> None:
    # Prompts 1 and 2 tied: the block {1, 2} has gains 1 and 0, expected 0.5 each ->
    # PGR at k = 0..4: 0, 1, 1.5, 2, 1; APGR = 0.25 * (0.5 + 1.25 + 1.75 + 1.5) = 1.25
    r = np.array([0.9, 0.5, 0.5, 0.1])
    assert apgr(r, W, S) == pytest.approx(1.25, abs=1e-12)
    # ...the mean of the two tie-breaking orders:
    a, b = apgr(np.array([0.9, 0.6, 0.5, 0.1]), W, S), apgr(np.array([0.9, 0.5, 0.6, 0.1]), W, S)
    assert apgr(r, W, S) == pytest.approx((a + b) / 2)


def test_constant_score_is_exactly_the_random_line() -> None:
    rng = np.random.default_rng(0)
    w = (rng.random(1000) < 0.6).astype(float)
    s = (rng.random(1000) < 0.8).astype(float)
    r = np.full(1000, 0.3)
    x, q = quality_curve(r, w, s)
    assert np.allclose(q, w.mean() + x * (s.mean() - w.mean()), atol=1e-12)
    assert apgr(r, w, s) == pytest.approx(0.5, abs=1e-12)
    assert cpt(r, w, s, pct=50) == pytest.approx(0.5, abs=1e-12)
    assert cpt(r, w, s, pct=80) == pytest.approx(0.8, abs=1e-12)


def test_oracle_beats_router_beats_random() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    hard = rng.random(n)
    w = (rng.random(n) > hard).astype(float)  # cheap fails on hard prompts
    s = (rng.random(n) > hard * 0.4).astype(float)
    router = hard + rng.normal(0, 0.3, n)  # a noisy but informative router
    a_oracle, a_router = apgr(oracle_scores(w, s), w, s), apgr(router, w, s)
    a_random = apgr(random_scores(n, seed=2), w, s)
    assert a_oracle > a_router > a_random
    assert a_oracle > 1.0  # the oracle also avoids prompts where cheap wins
    assert a_random == pytest.approx(0.5, abs=0.05)
    assert cpt(oracle_scores(w, s), w, s, pct=50) < cpt(router, w, s, pct=50) < cpt(random_scores(n, 2), w, s, pct=80)


def test_scores_in_judge_units() -> None:
    # Graded quality works the same as 0/1: w = [0.5, 0.9], s = [1.0, 0.9], gap 0.95 - 0.7 = 0.25,
    # gains [0.5, 0]; PGR at k = 0, 1, 2: 0, 0.5 / 2 / 0.25 = 1, 1 -> APGR = 0.5 * (0.5 + 1) = 0.75
    w, s = np.array([0.5, 0.9]), np.array([1.0, 0.9])
    assert apgr(np.array([1.0, 0.0]), w, s, n_points=3) == pytest.approx(0.75)
    assert apgr(np.array([1.0, 0.0]), w, s) == pytest.approx(0.75)


def test_baselines() -> None:
    assert np.array_equal(oracle_scores([1, 0, 0.5], [1, 1, 0]), [0, 1, -0.5])
    r = random_scores(10, seed=5)
    assert r.shape == (10,) and np.array_equal(r, random_scores(10, seed=5))
    h = heuristic_scores([
        "Classify: great phone",
        "Implement and debug a function; analyse the algorithm step by step and prove it terminates.",
        "word " * 2000,
        "Analyse this",
        "Analyze this",
    ])
    assert h.min() >= 0 and h.max() <= 1
    assert h[1] > h[0] and h[2] > h[0]
    assert h[3] == h[4]  # British and American spelling count alike
    assert heuristic_scores([]).shape == (0,)


def test_auc_hand_cases() -> None:
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    # pos {2, 3} vs neg {1, 2}: 1 + 0.5 + 1 + 1 = 3.5 of 4 pairs
    assert auc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert auc([3, 2, 1], [True, False, False]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auc([0.1, 0.2], [1, 1])


def test_calibration_hand_cases() -> None:
    p, y = [0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]
    # bin of 0.1: mean p 0.1 vs observed 0.5 (|0.4|); bin of 0.9: 0.9 vs 1.0 (|0.1|); equal weights
    assert ece(p, y, n_bins=10) == pytest.approx(0.25)
    assert brier(p, y) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert ece([0.0, 1.0], [0, 1]) == 0.0
    b = reliability_bins([0.0, 0.5, 1.0], [0, 1, 1], n_bins=4)
    assert np.allclose(b.centers, [0.125, 0.375, 0.625, 0.875])
    assert b.counts.tolist() == [1, 0, 1, 1]  # p = 1.0 lands in the last bin
    assert np.isnan(b.mean_predicted[1]) and np.isnan(b.observed[1])
    with pytest.raises(ValueError):
        ece([1.2], [1])


def test_evaluate_routing() -> None:
    route = np.array([True, False, False, True])
    res = evaluate_routing(route, W, S, cost_cheap=1.0, cost_strong=[10, 10, 10, 20])
    # quality per row: s, w, w, s = 1, 0, 1, 0
    assert res.n == 4 and res.strong_share == 0.5 and res.quality == 0.5
    assert res.quality_vs_strong == pytest.approx(0.5 / 0.75)
    assert res.pass_rate == 0.5
    assert (res.cost, res.cost_always_strong) == (32.0, 50.0)
    assert res.cost_per_request == 8.0 and res.cost_saved_fraction == pytest.approx(18 / 50)
    with pytest.raises(ValueError, match="boolean"):
        evaluate_routing(np.array([1, 0, 0, 1]), W, S, cost_cheap=1.0, cost_strong=10.0)


@pytest.mark.parametrize("fn", [apgr, lambda r, w, s: cpt(r, w, s, pct=50), quality_curve, pgr_curve])
def test_errors(fn) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        fn(R[:3], W, S)
    with pytest.raises(ValueError, match="empty"):
        fn([], [], [])


def test_equal_quality_is_an_error() -> None:
    with pytest.raises(ValueError, match="same mean quality"):
        apgr(R, W, W)
    with pytest.raises(ValueError, match="same mean quality"):
        cpt([0.2, 0.1], [1, 0], [0, 1], pct=50)
