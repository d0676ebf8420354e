"""The savings report and router-promote count escalations: both calls paid, the strong answer served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from toy_artifact import toy_answer_score, write_toy_pair

from router_model.offline.savings import compute_report, score_log
from router_model.offline.savings_cli import format_report
from training.promote_cache import ScoreCache
from training.promote_scoring import score_model

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


def _log(path: Path, *, answers: bool, n: int = 40) -> Path:
    """Even rows state a final answer and pass; odd rows do not and fail on the cheap model."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            final = i % 2 == 0
            row = {"id": f"r{i}", "prompt": f"Summarise note {i} in one line",
                   "outcomes": {CHEAP: {"passed": final}, STRONG: {"passed": True}},
                   "input_tokens": 100, "output_tokens": 40}
            if answers:
                row["grading"] = {CHEAP: {"answer": ("Done. The answer is (B)." if final else "Maybe B, or C?") + " x" * i}}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def escalating_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # threshold 0: every request tries the cheap model first; the toy score escalates the odd rows
    return write_toy_pair(tmp_path_factory.mktemp("esc") / "router", threshold=0.0, answer_threshold=0.5)


def test_the_savings_report_serves_the_strong_answer_and_pays_both_calls(escalating_dir: Path, tmp_path: Path) -> None:
    sc = score_log(escalating_dir, [_log(tmp_path / "log.jsonl", answers=True)])
    assert sc.answer_scores is not None
    assert sc.answer_scores[0] == pytest.approx(toy_answer_score(True), abs=1e-5)
    assert sc.answer_scores[1] == pytest.approx(toy_answer_score(False), abs=1e-5)
    rep = compute_report(sc)
    router, esc = rep["chosen"]["router"], rep["chosen"]["escalation"]
    assert esc["escalated_share"] == pytest.approx(0.5)
    assert router["quality_vs_strong"] == pytest.approx(1.0)  # every failing cheap answer was replaced
    expected = float(sc.cost_cheap.mean() + 0.5 * sc.cost_strong.mean())
    assert router["cost_per_request"] == pytest.approx(expected)
    assert esc["added_wait_p99_s"] > esc["added_wait_p50_s"] > 0.4
    text = format_report(rep)
    assert "with escalation (included above): 50.0% of requests" in text and "estimated" in text


def test_a_log_without_the_cheap_answers_is_reported_without_escalation_and_says_so(escalating_dir: Path,
                                                                                      tmp_path: Path) -> None:
    sc = score_log(escalating_dir, [_log(tmp_path / "log.jsonl", answers=False)])
    assert sc.answer_scores is None
    rep = compute_report(sc)
    assert "escalation" not in rep["chosen"]
    assert rep["chosen"]["router"]["quality_vs_strong"] == pytest.approx(0.5)
    assert any(n.startswith("WARNING: the router escalates on its answer score, but 40 of 40 rows lack")
               for n in rep["notes"])


def test_promote_scores_the_served_answers_and_caches_the_answer_scores(escalating_dir: Path, tmp_path: Path) -> None:
    log = _log(tmp_path / "eval.jsonl", answers=True)
    cache = ScoreCache(tmp_path / "cache")
    score, sc = score_model(escalating_dir, log, "1", tolerance=0.0)
    assert score.quality_vs_strong == pytest.approx(1.0) and score.goal_holds
    assert score.cost_per_request == pytest.approx(float(sc.cost_cheap.mean() + 0.5 * sc.cost_strong.mean()))
    cache.store("k" * 64, sc)
    back = cache.load("k" * 64, {"p": sc.p})
    assert back is not None and back.answer_threshold == pytest.approx(0.5)
    assert np.array_equal(back.answer_scores, sc.answer_scores)
    assert [a.tolist() for a in back.served()] == [a.tolist() for a in sc.served()]
