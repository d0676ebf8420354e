"""The answer score's training side: the joint certificate, the exported graph, the log's answers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from router_model.answer_score import ANSWER_SCORE_FILE, SCORE_FEATURES, AnswerScore
from router_model.artifact_records import EscalationRecord
from router_model.errors import ArtifactError
from router_model.offline.row import RowError, parse_line
from training.escalation import (
    Candidate,
    certify_route_and_escalate,
    escalation_stage,
    fit_answer_head,
    score_matrix,
    served,
    with_escalation,
)
from training.escalation_export import answer_score_graph, write_answer_score
from training.risk import ALL_STRONG
from training.threshold import Goal, ThresholdChoice, ThresholdStage


def population(n: int, *, informative: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows where the cheap model fails (and the strong one passes) on 20%; q sees it when informative."""
    rng = np.random.default_rng(seed)
    s = (rng.random(n) < 0.8).astype(float)
    loss = (rng.random(n) < 0.25) & (s == 1)
    w = np.where(loss, 0.0, s)
    p = np.clip(rng.beta(3, 1.5, n), 0, 1)  # a router that knows nothing
    q = np.clip(np.where(loss, rng.beta(5, 2, n), rng.beta(1.2, 6, n)), 0, 1) if informative else rng.random(n)
    return {"p": p, "q": q, "cheap_passed": w, "strong_passed": s}


def test_the_cascade_wins_when_the_score_sees_failures_and_the_cheap_call_is_cheap() -> None:
    d = population(4000, informative=True)
    n = len(d["p"])
    best, candidates = certify_route_and_escalate(
        d["p"], d["q"], cheap_passed=d["cheap_passed"], strong_passed=d["strong_passed"],
        cost_cheap=np.full(n, 0.02), cost_strong=np.ones(n), floor=0.95, risk=0.05, certificate="betting")
    assert best is not None and best.family == "cascade"
    assert best.threshold == 0.0 and best.answer_threshold is not None and 0 < best.answer_threshold < 1
    assert best.cost_vs_strong < next(c for c in candidates if c.family == "route").cost_vs_strong
    assert best.quality_vs_strong >= 0.95  # on the rows it was certified on, with the slack the test needs
    assert {c.family for c in candidates} == {"route", "cascade"}


def test_routing_alone_wins_when_the_score_is_noise_and_the_cheap_call_costs_half() -> None:
    d = population(4000, informative=False)
    n = len(d["p"])
    best, candidates = certify_route_and_escalate(
        d["p"], d["q"], cheap_passed=d["cheap_passed"], strong_passed=d["strong_passed"],
        cost_cheap=np.full(n, 0.5), cost_strong=np.ones(n), floor=0.95, risk=0.05, certificate="betting")
    cascade = next(c for c in candidates if c.family == "cascade")
    assert best is None or best.family == "route"
    assert not cascade.certified or cascade.cost_vs_strong >= (best.cost_vs_strong if best else 1.0)


def test_the_served_cascade_keeps_its_floor_on_new_draws() -> None:
    """Exact truth on a large population: the certified point's true quality >= 0.95 x strong on at
    least 1 - risk of the logs. 30 seeded draws, at most 4 violated (a loose check; the validity
    itself is measured over thousands of draws by benchmarks/certificate_simulation.py)."""
    pop = population(100_000, informative=True, seed=1)
    N = len(pop["p"])
    cc, cs = np.full(N, 0.02), np.ones(N)
    rng = np.random.default_rng(7)
    violated = 0
    for _ in range(30):
        idx = rng.integers(0, N, 1500)
        best, _ = certify_route_and_escalate(
            pop["p"][idx], pop["q"][idx], cheap_passed=pop["cheap_passed"][idx], strong_passed=pop["strong_passed"][idx],
            cost_cheap=cc[idx], cost_strong=cs[idx], floor=0.95, risk=0.05, certificate="betting")
        if best is None:
            continue
        truth = served(pop["p"], pop["q"], threshold=best.threshold, answer_threshold=best.answer_threshold,
                       cheap_passed=pop["cheap_passed"], strong_passed=pop["strong_passed"], cost_cheap=cc,
                       cost_strong=cs)
        violated += truth["quality_vs_strong"] < 0.95
    assert violated <= 4


def test_the_exported_graph_computes_the_fitted_head(tmp_path) -> None:
    rng = np.random.default_rng(3)
    answers = ["The answer is (B).", "It might be C, not sure", "", "Wait, actually... The answer is 42"] * 30
    F = score_matrix(answers, rng.random(len(answers)))
    y = (rng.random(len(answers)) < 0.3).astype(int)
    head = fit_answer_head(F, y)
    graph = answer_score_graph(mean=head.mean, scale=head.scale, coef=head.coef, intercept=head.intercept)
    assert onnx.load_from_string(graph).ir_version <= 9  # what onnxruntime 1.18 (the oldest supported) reads
    gap = write_answer_score(tmp_path / ANSWER_SCORE_FILE, graph, features=F, expected=head.predict(F))
    assert gap < 1e-5
    record = EscalationRecord(on=True, reason="test", family="cascade", answer_threshold=0.3, graph=ANSWER_SCORE_FILE,
                              features=SCORE_FEATURES, feature_version=1)
    score = AnswerScore.load(tmp_path / ANSWER_SCORE_FILE, record)
    assert score.score_matrix(F) == pytest.approx(head.predict(F), abs=1e-5)
    with pytest.raises(ArtifactError, match="differs from the fitted head"):
        write_answer_score(tmp_path / "other.onnx", graph, features=F, expected=head.predict(F) + 0.01)
    assert not (tmp_path / "other.onnx").exists()


def test_missing_answers_turn_escalation_off_before_any_test() -> None:
    n = 40
    esc = escalation_stage(answers=["The answer is (A)."] * (n - 1) + [None], p_oof=np.full(n, 0.5),
                           cheap_passed=np.ones(n), strong_passed=np.ones(n), cost_cheap=np.ones(n),
                           cost_strong=np.ones(n), folds=(), floor=0.95, risk=0.05, certificate="betting")
    assert not esc.record.on and "1 of 40 labelled rows lack" in esc.record.reason
    assert esc.record.candidates == () and esc.chosen is None


def _stage(n: int) -> ThresholdStage:
    choice = ThresholdChoice(threshold=0.7, goal=Goal.quality_floor(0.95, 0.05), met=True, strong_share=0.5,
                             quality_vs_strong=0.97, cost_per_request=0.5, cost_saved_fraction=0.5, quality=0.8)
    return ThresholdStage(head=None, choice=choice, rows="oof", scores=np.full(n, 0.5), labelled_rows=np.arange(n))


def test_escalation_is_not_tried_without_answers_or_for_a_budget() -> None:
    n = 20
    ones = np.ones(n)
    common = {"cheap_passed": ones, "strong_passed": ones, "cost_cheap": ones, "cost_strong": ones,
              "test_rows": np.arange(0), "p_test": np.zeros(0)}
    stage = _stage(n)
    choice, esc = with_escalation(stage, answers=[None] * n, goal=stage.choice.goal, **common)
    assert esc is None and choice is stage.choice
    budget = Goal("max_cost_per_request", 0.5, 0.05)
    choice, esc = with_escalation(stage, answers=["x"] * n, goal=budget, **common)
    assert esc is None and choice is stage.choice


def test_nothing_certified_serves_all_strong() -> None:
    n = 300
    rng = np.random.default_rng(0)
    w = (rng.random(n) < 0.3).astype(float)  # the cheap model fails most of the time: nothing cheap keeps 0.999
    s = np.ones(n)
    best, candidates = certify_route_and_escalate(rng.random(n), rng.random(n), cheap_passed=w, strong_passed=s,
                                                  cost_cheap=np.full(n, 0.1), cost_strong=s, floor=0.999, risk=0.05,
                                                  certificate="betting")
    assert best is None and not any(c.certified for c in candidates)
    assert all(isinstance(c, Candidate) for c in candidates)
    assert next(c for c in candidates if c.family == "route").threshold == ALL_STRONG


def test_the_log_keeps_answers_and_names_a_bad_one() -> None:
    line = {"prompt": "2+2?", "outcomes": {"a": {"passed": True}, "b": {"passed": True}},
            "grading": {"a": {"answer": "4", "judge_score": 9}, "b": {"failed_check": "empty"}}}
    row = parse_line(json.dumps(line).encode(), line_no=1, default_id="r1", pass_threshold=0.8)
    assert row is not None
    rec = row.record()
    assert dict(rec.answers) == {"a": "4"}
    again = parse_line(json.dumps(rec.to_row(["a", "b"])).encode(), line_no=1, default_id="r1", pass_threshold=0.8)
    assert again is not None and dict(again.record().answers) == {"a": "4"}
    line["grading"] = {"a": {"answer": 4}}
    with pytest.raises(RowError) as err:
        parse_line(json.dumps(line).encode(), line_no=1, default_id="r1", pass_threshold=0.8)
    assert err.value.field == "grading.a.answer"


def test_on_every_row_certifies_route_against_cascade_again_over_every_row() -> None:
    """--threshold-rows all with escalation tried: after the held-out evaluation, both the threshold and
    the route/cascade choice are certified on every labelled row, the test split included."""
    from training.escalation import on_every_row
    from training.head import make_target, select_head
    from training.threshold import threshold_stage

    rng = np.random.default_rng(3)
    n = 1200
    X = rng.normal(size=(n, 6))
    strong = (rng.random(n) < 0.9).astype(float)
    loss = (rng.random(n) < 1 / (1 + np.exp(-1.5 * X[:, 0] + 1.0))) & (strong > 0.5)
    cheap = np.where(loss, 0.0, strong)
    answers = [("Maybe (C)? I am not sure." if bad else "Step by step ... The answer is (B).") + f" {i}"
               for i, bad in enumerate(loss)]
    texts = [f"prompt {i}" for i in range(n)]
    tr, va, te = np.arange(0, 840), np.arange(840, 1020), np.arange(1020, n)
    outcomes = {"cheap_passed": cheap, "strong_passed": strong, "cost_cheap": np.full(n, 0.02),
                "cost_strong": np.ones(n)}
    goal = Goal.quality_floor(0.95, 0.05)
    head = select_head(X, cheap, strong, train_rows=tr, val_rows=va, target=make_target("joint"),
                       names=("logreg_c0.1",), say=lambda _: None)
    stage = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, goal=goal, rows="oof")
    p_test = stage.head.p_cheap_ok(X[te])
    choice, esc = with_escalation(stage, answers=answers, **outcomes, goal=goal, test_rows=te, p_test=p_test)
    assert esc is not None and esc.record.on and esc.record.evaluation  # the answers give failures away
    rows = {"train_rows": tr, "val_rows": va, "test_rows": te}
    final, shipped_choice, shipped = on_every_row(stage, esc, X=X, texts=texts, answers=answers, **outcomes, **rows,
                                                  goal=goal)
    assert final.rows == "all" and final.labelled_rows is not None and len(final.labelled_rows) == n
    assert shipped_choice.rows == "all" and shipped_choice.n_labelled == n and shipped_choice.certified
    assert shipped is not None and shipped.record.on and shipped.scores is not None and len(shipped.scores) == n
    assert shipped.record.evaluation == esc.record.evaluation  # the held-out check of the evaluated version
    assert shipped.fit_features is not None and len(shipped.fit_features) == n  # the answer score refit on every row
    # not tried (no answers): the threshold alone on every row
    final2, choice2, none = on_every_row(stage, None, X=X, texts=texts, answers=answers, **outcomes, **rows, goal=goal)
    assert none is None and choice2 is final2.choice and choice2.rows == "all"
