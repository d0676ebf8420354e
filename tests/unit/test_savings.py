"""`router-savings` arithmetic (router_model.offline.savings) on synthetic scores: the report's
grid against router_model.offline.metrics. The report of a trained router on a real log is
tests/integration/test_savings.py."""

from __future__ import annotations

import numpy as np
import pytest

from router_model.offline import metrics as M
from router_model.offline.metrics import expected_at_shares
from router_model.offline.savings import LabelledScores, compute_report
from router_model.offline.savings_cli import format_report


def _synthetic(p: np.ndarray, seed: int = 0) -> LabelledScores:
    rng = np.random.default_rng(seed)
    n = len(p)
    w = (rng.random(n) < 0.6).astype(float)
    s = np.maximum(w, (rng.random(n) < 0.5).astype(float))
    inp = rng.integers(10, 500, n).astype(float)
    out = np.full(n, 250.0)
    cc, cs = (inp * 0.15 + out * 0.6) / 1e6, (inp * 2.5 + out * 10) / 1e6
    return LabelledScores(p, w, s, cc, cs, inp, out, 0.5, "cheap", "strong", {}, {"notes": []})


def test_expected_at_shares_matches_metrics_quality_curve() -> None:
    rng = np.random.default_rng(1)
    sc = _synthetic(np.round(rng.random(300), 2))  # rounded: many ties
    x = np.linspace(0, 1, 51)
    q, c = expected_at_shares(1 - sc.p, sc.cheap_passed, sc.strong_passed, cost_cheap=sc.cost_cheap,
                              cost_strong=sc.cost_strong, shares=x)
    _, q_ref = M.quality_curve(1 - sc.p, sc.cheap_passed, sc.strong_passed, n_points=51)
    np.testing.assert_allclose(q, q_ref, atol=1e-12)
    assert c[0] == pytest.approx(sc.cost_cheap.mean()) and c[-1] == pytest.approx(sc.cost_strong.mean())


def test_constant_score_router_is_random_routing() -> None:
    sc = _synthetic(np.full(200, 0.7))
    rep = compute_report(sc, requests_per_month=1_000_000)
    for g in rep["grid"]:
        assert g["router"]["pass_rate"] == pytest.approx(g["random"]["pass_rate"])
        assert g["router"]["monthly_cost"] == pytest.approx(g["random"]["monthly_cost"])
    # Everything above the threshold of 0.5 goes cheap.
    assert rep["chosen"]["router"]["strong_share"] == 0.0
    info = {"model_dir": "m", "artifact_version": "v", "logs": ["l.jsonl"], "rows_read": 200, "skipped": {},
            "prices": {"source": "test", "as_of": "today", "cheap_per_1m": {"input": 0.15, "output": 0.6},
                       "strong_per_1m": {"input": 2.5, "output": 10.0}}}
    text = format_report({**rep, **info})
    assert sum(ln.startswith("*") and "%|" in ln for ln in text.splitlines()) == 1
    assert "held-out" not in text  # a log the router never saw gets no "trained on" warning


def test_volume_scales_dollars_only() -> None:
    sc = _synthetic(np.random.default_rng(2).random(100))
    a = compute_report(sc, requests_per_month=1_000)
    b = compute_report(sc, requests_per_month=10_000)
    for ga, gb in zip(a["grid"], b["grid"]):
        assert gb["router"]["saved_vs_strong"] == pytest.approx(10 * ga["router"]["saved_vs_strong"])
        assert gb["router"]["pass_rate"] == ga["router"]["pass_rate"]
