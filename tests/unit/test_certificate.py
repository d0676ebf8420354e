"""The betting certificate (training/risk.py, docs/guarantee.md): valid at the boundary of the null,
more powerful than the union of Clopper-Pearson bounds (and the exact test more than betting), the budget version, determinism, and the
record of which certificate an artifact used. The large simulation: benchmarks/certificate_simulation.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router_model.artifact import GoalRecord
from router_model.errors import ConfigError
from training.risk import (
    CERTIFICATES,
    DEFAULT_CERTIFICATE,
    METHOD,
    METHOD_BETTING,
    METHOD_EXACT,
    betting_budget_log_evalues,
    betting_floor_log_evalues,
    betting_log_evalue,
    betting_rejects,
    certificate_of,
    certify_budget,
    certify_quality_floor,
)
from training.threshold import Goal, choose_threshold, goal_record_fields
from training.tracking import goal_params

F = 0.95


def _floor_rows(rng: np.random.Generator, n: int, *, p_loss: float, p_gain: float, p_s: float):
    """Per-row (loss, gain, strong passes): a loss needs the strong model to pass, a gain needs it to fail."""
    u = rng.random(n)
    loss = u < p_loss
    gain = (u >= p_loss) & (u < p_loss + p_gain)
    s = loss | ((u >= p_loss + p_gain) & (u < p_s + p_gain))
    return loss.astype(float), gain.astype(float), s.astype(float)


def test_floor_null_at_the_boundary_is_rejected_at_most_delta() -> None:
    # E[Z] = p_loss - p_gain - (1 - F) p_s = 0 exactly: the floor holds with equality (the hardest null).
    rng = np.random.default_rng(5)
    p_s, p_gain = 0.8, 0.04
    p_loss = p_gain + (1 - F) * p_s  # 0.08
    n, draws, delta = 400, 400, 0.1
    rejected = []
    for i in range(draws):
        loss, gain, s = _floor_rows(rng, n, p_loss=p_loss, p_gain=p_gain, p_s=p_s)
        rank = np.arange(n)  # every row routed cheap (m = n)
        e = betting_floor_log_evalues(rank, loss, gain, s, np.array([n]), floor=F, risk=delta, seed=i)
        rejected.append(e[0] >= math.log(1 / delta))
    rate = float(np.mean(rejected))
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws), rate  # delta + Monte-Carlo slack


def test_generic_test_null_and_power() -> None:
    # Z in [-1, 1], mean 0: rejected at most ~delta; mean -0.2: rejected nearly always at n = 400.
    rng = np.random.default_rng(6)
    delta = 0.1
    null = rng.choice([-1.0, 1.0], size=(300, 400))
    assert betting_rejects(null, 1.0, delta, lo=-1.0).mean() <= delta + 3 * math.sqrt(delta * 0.9 / 300)
    alt = rng.choice([-1.0, 1.0], size=(100, 400), p=[0.6, 0.4])
    assert betting_rejects(alt, 1.0, delta, lo=-1.0).mean() > 0.9


def test_counts_path_equals_the_row_by_row_wealth() -> None:
    # One row per block: the counts version of the floor test is the generic betting test, number for number.
    rng = np.random.default_rng(2)
    n = 300
    loss, gain, s = _floor_rows(rng, n, p_loss=0.05, p_gain=0.05, p_s=0.8)
    rank = rng.permutation(n)
    m = np.array([0, 30, 150, 300])
    fast = betting_floor_log_evalues(rank, loss, gain, s, m, floor=F, risk=0.05, max_blocks=n)
    Z = (rank[None, :] < m[:, None]) * (loss - gain)[None, :] - (1 - F) * s[None, :]
    assert fast == pytest.approx(betting_log_evalue(Z, F, 0.05, lo=-1.0, permutations=1), rel=1e-9, abs=1e-9)


def _population(n: int, rng: np.random.Generator):
    p = rng.beta(2.2, 1.0, n)
    s = (rng.random(n) < 0.81).astype(float)
    loss = (rng.random(n) < 0.75 * (1 - p) ** 1.3) & (s == 1)
    gain = (rng.random(n) < 0.25 * p) & (s == 0)
    return p, np.where(loss, 0.0, np.where(gain, 1.0, s)), s


def test_betting_certifies_more_than_clopper_pearson_and_keeps_the_floor() -> None:
    rng = np.random.default_rng(8)
    P, W, S = _population(100_000, rng)
    order = np.argsort(-P)
    truth_q = (S.sum() + np.concatenate([[0.0], np.cumsum((W - S)[order])])) / S.sum()  # quality / strong, top k cheap
    share = {c: [] for c in CERTIFICATES}
    held = {c: [] for c in CERTIFICATES}
    for _ in range(20):
        idx = rng.integers(0, len(P), 1000)
        for c in CERTIFICATES:
            rc = certify_quality_floor(P[idx], W[idx], S[idx], floor=F, risk=0.05, certificate=c)
            k = int((rc.threshold <= P).sum())
            share[c].append(k / len(P))
            held[c].append(truth_q[k] >= F)
    assert np.mean(share["betting"]) > np.mean(share["clopper-pearson"]) + 0.02, share
    assert np.mean(share["exact"]) > np.mean(share["betting"]) + 0.01, share
    assert all(np.mean(held[c]) >= 0.9 for c in CERTIFICATES), held


def test_budget_null_at_the_boundary_and_certified_budget() -> None:
    rng = np.random.default_rng(9)
    n, draws, delta = 400, 300, 0.1
    rejected = []
    for i in range(draws):
        spend = rng.uniform(0.0, 1.0, n)  # mean 0.5 = the budget
        e = betting_budget_log_evalues(np.arange(n), spend, spend, np.array([n]), budget=0.5, cap=1.0, risk=delta,
                                       seed=i)
        rejected.append(e[0] >= math.log(1 / delta))
    assert np.mean(rejected) <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # Through choose_threshold: a dollar budget certified, its bound under the budget, and more rows
    # kept cheap than the Hoeffding-Bentkus bound allows.
    n = 2000
    p = rng.random(n)
    w = (rng.random(n) < p).astype(float)
    s = np.ones(n)
    cost_strong = rng.uniform(0.5, 1.5, n)
    out = {}
    for c in CERTIFICATES:
        ch = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=cost_strong, goal=Goal.max_cost_per_request(0.6, 0.05, c))
        assert ch.certified and ch.cost_per_request <= ch.bound <= 0.6 + 1e-12
        out[c] = ch
    assert out["betting"].method == METHOD_BETTING and out["clopper-pearson"].method.endswith("hoeffding-bentkus")
    # a spend is not a count of lost passes: exact runs the betting test
    assert (out["exact"].threshold, out["exact"].method) == (out["betting"].threshold, METHOD_BETTING)
    assert out["betting"].strong_share >= out["clopper-pearson"].strong_share  # more strong calls within the budget
    rc = certify_budget(p, w, s, spend_cheap=np.zeros(n), spend_strong=np.ones(n), budget=0.3, risk=0.05)
    assert rc.certified and rc.method == METHOD_BETTING and rc.bound <= 0.3


def test_deterministic_with_the_seed() -> None:
    rng = np.random.default_rng(4)
    p, w, s = _population(1500, rng)
    a = certify_quality_floor(p, w, s, floor=F, risk=0.05)
    b = certify_quality_floor(p.copy(), w.copy(), s.copy(), floor=F, risk=0.05)
    assert a == b and a.method == METHOD_EXACT
    loss, gain = ((w == 0) & (s == 1)).astype(float), ((w == 1) & (s == 0)).astype(float)
    rank = np.argsort(np.argsort(-p))
    m = np.array([300, 600])
    e1 = betting_floor_log_evalues(rank, loss, gain, s, m, floor=F, risk=0.05, seed=1)
    assert np.array_equal(e1, betting_floor_log_evalues(rank, loss, gain, s, m, floor=F, risk=0.05, seed=1))
    assert not np.array_equal(e1, betting_floor_log_evalues(rank, loss, gain, s, m, floor=F, risk=0.05, seed=2))


def test_the_record_says_which_certificate() -> None:
    assert DEFAULT_CERTIFICATE == "exact" and Goal.quality_floor(0.95).certificate == "exact"
    with pytest.raises(ConfigError, match="certificate"):
        Goal.quality_floor(0.95, 0.05, "bonferroni")
    rng = np.random.default_rng(1)
    p, w, s = _population(1000, rng)
    for cert in CERTIFICATES:
        c = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.95, 0.05, cert))
        rec = GoalRecord.from_dict(goal_record_fields(c))
        assert rec.certificate == cert and f"{cert} certificate" in rec.describe()
        assert goal_params(rec)["goal_certificate"] == cert
    emp = choose_threshold(p, w, s, cost_cheap=0.1, cost_strong=1.0, goal=Goal.quality_floor(0.95, None))
    assert goal_record_fields(emp)["certificate"] == "none"
    # Artifacts written before the field: with a risk they were Clopper-Pearson; without, no certificate.
    old = GoalRecord.from_dict({"kind": "quality_floor", "value": 0.95, "risk": 0.05, "method": METHOD})
    assert old.certificate == "clopper-pearson" and "clopper-pearson certificate" in old.describe()
    assert GoalRecord.from_dict({"kind": "quality_floor", "value": 0.95}).certificate == "none"
    assert certificate_of(METHOD) == "clopper-pearson" and certificate_of(METHOD_BETTING) == "betting"
    assert certificate_of(METHOD_EXACT) == "exact"
    assert certificate_of("empirical") is None
