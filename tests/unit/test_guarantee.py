"""Risk-controlled thresholds (training/risk.py, docs/guarantee.md): the bounds on hand cases, the
"cannot certify" path, the empirical violation rate on a synthetic population, and the goal record's
defaults. On real public data and in a trained artifact: tests/integration/test_guarantee.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router_model.artifact import GoalRecord
from training.risk import (
    ALL_STRONG,
    GRID,
    METHOD,
    binomial_lower,
    binomial_upper,
    certify_budget,
    certify_quality_floor,
    hb_pvalue,
    hb_upper,
)
from training.threshold import Goal, choose_threshold, describe_choice

CP = "clopper-pearson"  # the hand cases below are the closed forms of the earlier certificate

# ---------------------------------------------------------------- the bounds, by hand


def test_clopper_pearson_closed_forms() -> None:
    # 0 of n: the upper bound solves (1 - u)^n = delta; n of n: the lower bound solves l^n = delta.
    for n, d in ((10, 0.05), (100, 0.01), (1000, 0.05 / 3)):
        assert binomial_upper(0, n, d) == pytest.approx(1 - d ** (1 / n), rel=1e-9)
        assert binomial_lower(n, n, d) == pytest.approx(d ** (1 / n), rel=1e-9)
    assert binomial_upper(5, 5, 0.05) == 1.0 and binomial_lower(0, 5, 0.05) == 0.0
    # 1 of 2 at delta 0.25: P(Bin(2, u) <= 1) = 1 - u^2 = 0.25 -> u = sqrt(0.75).
    assert binomial_upper(1, 2, 0.25) == pytest.approx(math.sqrt(0.75), rel=1e-9)
    # The bounds bracket the observed rate and tighten with n.
    assert binomial_lower(30, 100, 0.05) < 0.3 < binomial_upper(30, 100, 0.05)
    assert binomial_upper(300, 1000, 0.05) - 0.3 < binomial_upper(30, 100, 0.05) - 0.3


def test_hoeffding_bentkus_by_hand() -> None:
    # Sample mean 0 of n=100 against mu=0.05: Hoeffding exp(-n h1(0, mu)) = 0.95^100 = 0.00592;
    # Bentkus e * P(Bin(100, 0.05) = 0) = e * 0.00592: the p-value is the smaller, Hoeffding's.
    assert hb_pvalue(np.array(0.0), 100, np.array(0.05)) == pytest.approx(0.95**100, rel=1e-6)
    # The upper bound is where that p-value crosses delta: 1 - 0.05^(1/100) for a mean of 0.
    assert hb_upper(0.0, 100, 0.05)[0] == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert 0.1 < hb_upper(0.1, 1000, 0.05)[0] < 0.13


def test_grid_is_fixed_and_runs_safest_first() -> None:
    assert GRID[0] == ALL_STRONG and GRID[1] == 1.0 and GRID[-1] == 0.0
    assert np.all(np.diff(GRID) < 0) and len(GRID) == 1002


def _all_agree(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n rows, both models always pass, the classifier sure the cheap one is fine."""
    return np.full(n, 0.9), np.ones(n), np.ones(n)


def test_floor_certified_on_a_hand_case() -> None:
    # No losses, no gains, all strong pass. At any threshold routing rows cheap, the test is
    # (1 - (d/3)^(1/n)) - 0 - (1 - F) (d/3)^(1/n) <= 0. n=200, d=0.05, F=0.95: 0.0203 - 0.0490 < 0.
    p, w, s = _all_agree(200)
    rc = certify_quality_floor(p, w, s, floor=0.95, risk=0.05, certificate=CP)
    assert rc.certified and rc.threshold == 0.0 and rc.method == METHOD and rc.n_needed is None
    d3 = 0.05 / 3
    assert rc.bound == pytest.approx(1 - (1 - d3 ** (1 / 200)) / d3 ** (1 / 200), rel=1e-9)


def test_cannot_certify_goes_all_strong_and_says_how_many_rows() -> None:
    # Same rows at F = 0.99: 0.0203 > 0.01 * 0.9797 fails. Needed: (d/3)^(1/n) >= 1/1.01, i.e.
    # n >= ln(d/3) / ln(1/1.01) = 411.5 -> 412 rows.
    p, w, s = _all_agree(200)
    rc = certify_quality_floor(p, w, s, floor=0.99, risk=0.05, certificate=CP)
    assert not rc.certified and rc.threshold == ALL_STRONG and rc.bound == 1.0
    assert rc.n_needed == math.ceil(math.log(0.05 / 3) / math.log(1 / 1.01)) == 412
    # At the needed size it certifies.
    assert certify_quality_floor(*_all_agree(412), floor=0.99, risk=0.05, certificate=CP).certified
    # Through choose_threshold: met False, all strong, floor 1.0, the message names the size.
    c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.99, 0.05, CP))
    assert (c.met, c.certified, c.threshold, c.strong_share, c.certified_floor) == (False, False, ALL_STRONG, 1.0, 1.0)
    text = "\n".join(describe_choice(c))
    assert "cannot certify" in text and "about 412 labelled rows" in text and "strong model" in text


def test_no_gap_at_all_says_no_size_helps() -> None:
    # The cheap model fails everything the strong one passes: one cheap row of 500 already loses
    # 0.2% of quality, more than the 0.1% a 99.9% floor allows, so no size would certify anything.
    n = 500
    p, w, s = np.linspace(0, 1, n), np.zeros(n), np.ones(n)
    c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.999))
    assert not c.certified and c.n_needed is None and c.threshold == ALL_STRONG
    assert "no cheap routing observed here keeps the floor" in "\n".join(describe_choice(c))


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    # The most confident rows are losses: testing from the safe end stops there, even though
    # routing everything cheap would look fine on average (many gains further down).
    n = 2000
    p = np.linspace(1.0, 0.0, n, endpoint=False)
    w, s = np.ones(n), np.ones(n)
    w[:150] = 0.0  # the top 150 by p: cheap fails, strong passes (7.5% of quality, over the 5% allowed)
    s[200:800] = 0.0  # lower down: only cheap passes (600 rows: all cheap nets a gain)
    assert np.where(p >= 0.0, w, s).mean() > s.mean()
    rc = certify_quality_floor(p, w, s, floor=0.95, risk=0.05)
    assert rc.certified and p[150] < p[70] < rc.threshold < 1.0


def test_budget_certified_from_the_cheap_end() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    p = rng.random(n)
    w = (rng.random(n) < p).astype(float)
    s = np.ones(n)
    c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.max_strong_share(0.3, 0.05, CP))
    assert c.certified and c.bound is not None and c.bound <= 0.3
    # Observed share sits below the budget by about the confidence margin.
    assert 0.2 < c.strong_share < 0.3 and c.bound == pytest.approx(binomial_upper(c.strong_share * n, n, 0.05))
    c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.max_cost_per_request(0.5, 0.05, CP))
    assert c.certified and c.cost_per_request < c.bound <= 0.5 and c.method.endswith("hoeffding-bentkus")
    # A budget below the all-cheap cost cannot be certified: all cheap, not met.
    c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.max_cost_per_request(0.1, 0.05))
    assert not c.met and c.threshold == 0.0
    rc = certify_budget(p, w, s, spend_cheap=np.zeros(n), spend_strong=np.ones(n), budget=1.0, risk=0.05)
    # Budget 100%: the best quality (that of all strong), at the cheapest threshold reaching it.
    assert rc.certified and np.where(p >= rc.threshold, w, s).mean() == s.mean() and rc.threshold < 1.0


# ---------------------------------------------------------------- the guarantee, measured


def test_violation_rate_on_a_synthetic_population() -> None:
    """150 logs of 600 rows from a known population: the floor fails on at most ~risk of them."""
    rng = np.random.default_rng(7)
    pop = 200_000
    p = rng.beta(4, 1.5, pop)
    s = (rng.random(pop) < 0.85).astype(float)
    loss = (rng.random(pop) > p) & (s == 1)  # the lower p, the likelier the cheap model loses a pass
    gain = (rng.random(pop) < 0.04) & (s == 0)
    w = np.where(loss, 0.0, np.where(gain, 1.0, s))
    goal = Goal.quality_floor(0.95, 0.1)
    held, cheap = [], []
    for _ in range(150):
        idx = rng.choice(pop, 600, replace=False)
        c = choose_threshold(p[idx], w[idx], s[idx], cost_cheap=0.1, cost_strong=1.0, goal=goal)
        routed = np.where(p >= c.threshold, w, s)
        held.append(routed.mean() / s.mean() >= 0.95)
        cheap.append((p >= c.threshold).mean())
    empirical = Goal.quality_floor(0.95, None)
    old = [
        np.where(p >= choose_threshold(p[i], w[i], s[i], cost_cheap=0.1, cost_strong=1.0, goal=empirical).threshold,
                 w, s).mean() / s.mean() >= 0.95
        for i in (rng.choice(pop, 600, replace=False) for _ in range(60))
    ]
    violations = 1 - float(np.mean(held))
    assert violations <= 0.1 + 0.05, violations  # risk 0.1, plus sampling slack of 150 draws (2 s.e.)
    assert np.mean(cheap) > 0.05  # it does route something cheap
    assert 1 - float(np.mean(old)) > 0.3  # the empirical rule breaks the floor far more often


# ---------------------------------------------------------------- the goal record


def test_old_goal_record_loads_with_defaults() -> None:
    g = GoalRecord.from_dict({"kind": "quality_floor", "value": 0.95, "met_on_validation": True})
    assert (g.risk, g.method, g.certified, g.certified_floor, g.threshold_rows) == (None, "empirical", None, None,
                                                                                    "validation")
    assert "no risk control" in g.describe()
    new = GoalRecord.from_dict({**g.to_dict(), "risk": 0.05, "method": METHOD, "certified": True,
                                "certified_floor": 0.95, "n_labelled": 850, "threshold_rows": "oof"})
    assert "certified floor 0.950" in new.describe() and "risk 0.05" in new.describe()
    from router_model.errors import ArtifactError

    with pytest.raises(ArtifactError, match="goal.risk"):
        GoalRecord.from_dict({"kind": "quality_floor", "value": 0.95, "risk": "high"})




# ---------------------------------------------------------------- every labelled row (--threshold-rows all)


def _small_log(n: int = 900, seed: int = 5) -> dict:
    """Prompts whose first feature decides whether the cheap model fails (and the strong one passes)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    hard = rng.random(n) < 1 / (1 + np.exp(-2.0 * X[:, 0]))
    strong = (rng.random(n) < 0.9).astype(float)
    cheap = np.where(hard, 0.0, (rng.random(n) < 0.85).astype(float))
    texts = [f"prompt number {i}" for i in range(n)]
    rows = np.arange(n)
    return {"X": X, "texts": texts, "cheap_passed": cheap, "strong_passed": strong, "cost_cheap": np.full(n, 0.1),
            "cost_strong": np.ones(n), "train": rows[: int(0.7 * n)], "val": rows[int(0.7 * n): int(0.85 * n)],
            "test": rows[int(0.85 * n):]}


def test_every_row_stage_cross_fits_over_all_rows_and_refits_on_them() -> None:
    from training.head import make_target, select_head
    from training.threshold import every_row_stage, threshold_stage

    log = _small_log()
    X, texts, tr, va, te = log["X"], log["texts"], log["train"], log["val"], log["test"]
    outcomes = {k: log[k] for k in ("cheap_passed", "strong_passed", "cost_cheap", "cost_strong")}
    head = select_head(X, log["cheap_passed"], log["strong_passed"], train_rows=tr, val_rows=va,
                       target=make_target("joint"), names=("logreg_c0.1",), say=lambda _: None)
    goal = Goal.quality_floor(0.9, 0.05)
    stage = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, goal=goal)
    assert stage.rows == "oof" and stage.choice.n_labelled == len(tr) + len(va)
    rows = {"train_rows": tr, "val_rows": va, "test_rows": te}
    final = every_row_stage(stage, X, texts, **outcomes, **rows, goal=goal)
    assert final.rows == "all" and final.choice.rows == "all" and final.choice.n_labelled == len(X)
    assert final.labelled_rows is not None and sorted(final.labelled_rows.tolist()) == list(range(len(X)))
    # every row is in exactly one fold, and no fold's head saw the rows it scored
    held = np.concatenate([b for _, b in final.folds])
    assert sorted(held.tolist()) == list(range(len(X)))
    assert all(not set(a.tolist()) & set(b.tolist()) for a, b in final.folds)
    # the exported head is refit on every row, so it is not the train + validation head
    assert not np.allclose(final.head.p_cheap_ok(X[te]), stage.head.p_cheap_ok(X[te]))
    assert final.choice.certified and final.choice.threshold < ALL_STRONG
    assert "every row" in describe_choice(final.choice)[0]
    # nothing to add: a stage chosen on validation only, or a goal without a risk, is returned as it is
    val_only = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, goal=goal, rows="validation")
    assert every_row_stage(val_only, X, texts, **outcomes, **rows, goal=goal) is val_only
    assert every_row_stage(stage, X, texts, **outcomes, **rows, goal=Goal.quality_floor(0.9, None)) is stage


def test_the_goal_record_says_every_row() -> None:
    g = GoalRecord.from_dict({"kind": "quality_floor", "value": 0.95, "met_on_validation": True, "risk": 0.05,
                              "method": METHOD, "certified": True, "certified_floor": 0.95, "n_labelled": 1000,
                              "threshold_rows": "all"})
    assert "on 1000 labelled (all) rows" in g.describe()


def test_an_outcome_seen_once_in_training_is_left_out_not_a_crash() -> None:
    """A small log where the cheap model alone passed one training prompt: calibration needs two
    rows of a class, so that row is left out of the fit (said so) instead of failing router-train."""
    from training.head import make_target, refit_head, select_head

    log = _small_log(n=300)
    X, tr, va = log["X"], log["train"], log["val"]
    cheap, strong = log["cheap_passed"].copy(), log["strong_passed"].copy()
    strong[cheap > 0.5] = 1.0  # no "only the cheap model passed" outcome anywhere ...
    strong[tr[0]], cheap[tr[0]] = 0.0, 1.0  # ... but one, in the training split
    said: list[str] = []
    head = select_head(X, cheap, strong, train_rows=tr, val_rows=va, target=make_target("joint"),
                       names=("logreg_c0.1",), say=said.append)
    assert any("left out 1 training row(s)" in line for line in said), said
    assert 1 not in list(head.model.classes_)  # the class seen once is not in the fitted head
    p = head.p_cheap_ok(X[va])
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    refit = refit_head(head, X[np.concatenate([tr, va])], cheap_passed=cheap[np.concatenate([tr, va])],
                       strong_passed=strong[np.concatenate([tr, va])])
    assert np.isfinite(refit.p_cheap_ok(X[va])).all()
