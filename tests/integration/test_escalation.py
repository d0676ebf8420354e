"""router-train with the cheap model's answers in the log: the answer score is fitted, certified
against routing alone, exported, loaded, reported. Real data: mmlu-pro (gemini-1.5-flash-002 ->
gpt-4o-2024-05-13) with flash's own answers from the raw MMLU-Pro outputs; skips without it.

The router embeds with the static embedder (the session's, shared with test_static_embedder.py):
the answer score does not depend on the embedder, and MiniLM would add a minute of embedding and
int8 calibration to CI for the same code path."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from conftest import require_shared

from router_model.__main__ import main as router_model_main
from router_model.artifact import ESCALATION_FORMAT_VERSION, PAIR_FORMAT_VERSION, read_metadata
from router_model.offline.savings_cli import main as savings_main
from router_model.router import Router

from .conftest import _train

CHEAP, STRONG = "gemini-1.5-flash-002", "gpt-4o-2024-05-13"
ROWS = 1500


@pytest.fixture(scope="module")
def escalation_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    normalized = require_shared("mmlu-pro/mmlu-pro.normalized.jsonl")
    outputs = require_shared(f"mmlu-pro/raw/model_outputs_zips/model_outputs_{CHEAP}_5shots.zip")
    with zipfile.ZipFile(outputs) as z:
        answers = {f"mmlu-pro-{it['question_id']}": it.get("model_outputs") or ""
                   for it in json.loads(z.read(z.namelist()[0]))}
    log = tmp_path_factory.mktemp("escalation-log") / "labelled.jsonl"
    rows = 0
    with open(normalized, encoding="utf-8") as src, open(log, "w", encoding="utf-8") as out:
        for line in src:
            r = json.loads(line)
            cheap, strong = r["models"].get(CHEAP), r["models"].get(STRONG)
            if cheap is None or strong is None or r["id"] not in answers:
                continue
            out.write(json.dumps({"id": r["id"], "prompt": r["prompt"],
                                  "outcomes": {CHEAP: {"passed": cheap >= 0.5}, STRONG: {"passed": strong >= 0.5}},
                                  "grading": {CHEAP: {"answer": answers[r["id"]]}}}) + "\n")
            rows += 1
            if rows == ROWS:
                break
    return log


@pytest.fixture(scope="module")
def escalation_trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, static_embedder: str,
                       escalation_log: Path):
    return _train(tmp_path_factory.mktemp("escalation") / "router", cache_dir, seed=0, logs=(escalation_log,),
                  heads=("logreg_c0.1",), embedder=static_embedder)


@pytest.fixture(scope="module")
def logprob_trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, static_embedder: str,
                    escalation_log: Path):
    """The same log with token log-probabilities on every cheap answer. No public log holds them, so
    they are made up here to give the rows where flash fails and gpt-4o passes away: this checks the
    path from the log to the served score, it measures nothing."""
    log = tmp_path_factory.mktemp("logprob-log") / "labelled.jsonl"
    with open(escalation_log, encoding="utf-8") as src, open(log, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            lost = not row["outcomes"][CHEAP]["passed"] and row["outcomes"][STRONG]["passed"]
            row["grading"][CHEAP]["token_logprobs"] = [-0.9 if lost else -0.05] * 8
            out.write(json.dumps(row) + "\n")
    return _train(tmp_path_factory.mktemp("logprobs") / "router", cache_dir, seed=0, logs=(log,),
                  heads=("logreg_c0.1",), embedder=static_embedder)


@pytest.fixture(scope="module")
def routing_only_trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, static_embedder: str,
                         escalation_log: Path):
    """The same log with --escalation off: the default --threshold-rows all then certifies on every row."""
    return _train(tmp_path_factory.mktemp("routing-only") / "router", cache_dir, seed=0, logs=(escalation_log,),
                  heads=("logreg_c0.1",), embedder=static_embedder, escalation="off")


def test_the_answer_score_is_certified_against_routing_alone_and_served_when_it_pays(escalation_trained) -> None:
    meta = read_metadata(escalation_trained.model_dir)
    esc = meta.escalation
    assert esc is not None and [c["family"] for c in esc.candidates] == ["route", "cascade"]
    router = Router.load(escalation_trained.model_dir)
    if esc.on:  # the cascade won: format 3, the graph loads, the routing threshold sends every request cheap first
        assert meta.format_version == ESCALATION_FORMAT_VERSION and esc.family == "cascade"
        assert router.answer_score is not None and meta.threshold == 0.0
        hedge = router.answer_score.score("It might be (C), or possibly (D); I am not sure.", p_cheap_ok=0.5)
        stated = router.answer_score.score("Step by step: ... so 6 / 3 = 2. The answer is (B).", p_cheap_ok=0.5)
        assert 0.0 <= stated < hedge <= 1.0
        assert esc.evaluation["served"]["escalated_share"] > 0
    else:  # routing alone won (or nothing was certified): a plain pair, and the record says why
        assert meta.format_version == PAIR_FORMAT_VERSION and router.answer_score is None and esc.reason
    chosen = next(c for c in esc.candidates if c["family"] == (esc.family if esc.family != "off" else "route"))
    assert chosen["certified"] == (esc.family != "off")


def test_info_and_the_savings_report_say_whether_it_escalates(escalation_trained, capsys) -> None:
    model_dir = escalation_trained.model_dir
    on = read_metadata(model_dir).escalation.on
    assert router_model_main(["info", "--model-dir", str(model_dir)]) == 0
    assert ("escalation: on (cascade" if on else "escalation: off (") in capsys.readouterr().out
    test_log = model_dir.parent / (model_dir.name + "-report") / "test.jsonl"
    assert all("grading" in json.loads(line) for line in test_log.read_text().splitlines())  # answers kept
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert savings_main(["--model-dir", str(model_dir), "--log", str(test_log)]) == 0
    assert ("with escalation (included above)" in buf.getvalue()) == on


def test_without_escalation_the_threshold_and_head_use_every_labelled_row(routing_only_trained, escalation_trained) -> None:
    """--threshold-rows all (the default): certified on every row after the held-out evaluation, which stays
    the train + validation version's; the prompt digest covers the test rows, so test.jsonl is reported as seen.
    When escalation is tried, route against cascade is certified again on every row too."""
    from router_model.offline.savings import compute_report, score_log

    meta = read_metadata(routing_only_trained.model_dir)
    rows = meta.data.split_rows
    assert meta.goal.threshold_rows == "all" and meta.goal.n_labelled == sum(rows.values())
    shipped = routing_only_trained.evaluation["shipped"]
    assert shipped["n_labelled"] == sum(rows.values()) and shipped["evaluated_n_labelled"] == rows["train"] + rows["val"]
    assert shipped["threshold"] == pytest.approx(meta.threshold)
    tried = read_metadata(escalation_trained.model_dir)
    assert tried.goal.threshold_rows == "all" and tried.goal.n_labelled == sum(tried.data.split_rows.values())
    assert escalation_trained.evaluation["shipped"]["evaluated_n_labelled"] == rows["train"] + rows["val"]
    model_dir = routing_only_trained.model_dir
    report = compute_report(score_log(model_dir, [model_dir.parent / (model_dir.name + "-report") / "test.jsonl"]))
    assert report["rows_seen_in_training"] == rows["test"]
    assert report["notes"][0].startswith(f"WARNING: {rows['test']} of {rows['test']} rows")


def test_token_logprobs_in_the_log_reach_the_served_score(logprob_trained, capsys) -> None:
    from router_model.answer_score import SCORE_FEATURES_WITH_LOGPROBS, MissingLogprobsError

    model_dir = logprob_trained.model_dir
    esc = read_metadata(model_dir).escalation
    assert esc is not None and esc.on and tuple(esc.features) == SCORE_FEATURES_WITH_LOGPROBS
    assert "token log-probabilities" in esc.reason and esc.evaluation["answer_score_auc"] > 0.95
    scorer = Router.load(model_dir).answer_score
    assert scorer is not None and scorer.needs_logprobs
    stated = "Step by step: ... The answer is (B)."
    assert scorer.score(stated, p_cheap_ok=0.5, token_logprobs=[-0.9] * 8) > scorer.threshold \
        > scorer.score(stated, p_cheap_ok=0.5, token_logprobs=[-0.05] * 8)
    with pytest.raises(MissingLogprobsError):
        scorer.score(stated, p_cheap_ok=0.5)
    assert router_model_main(["info", "--model-dir", str(model_dir)]) == 0
    assert "the score reads the cheap answer's token log-probabilities" in capsys.readouterr().out
    test_log = model_dir.parent / (model_dir.name + "-report") / "test.jsonl"
    assert all("token_logprobs" in json.loads(line)["grading"][CHEAP] for line in test_log.read_text().splitlines())
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert savings_main(["--model-dir", str(model_dir), "--log", str(test_log)]) == 0
    assert "with escalation (included above)" in buf.getvalue()
