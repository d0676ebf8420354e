"""Token log-probabilities of the cheap answer as answer-score features (issue 26, optional, off by default).

The labelling asks the cheap model for them only when told (`router-label --logprobs`, shadow
`logprobs: true`); router-train reads them when every row kept them; an artifact whose score reads
them makes the gateway ask the cheap model for them (chat completions' `"logprobs": true`) and strip
them from callers that did not ask. The upstream below speaks chat completions with the documented
`choices[0].logprobs.content[*].logprob` shape: every token of its answer gets the log-probability
of the request's `x-fake-logprob` header, and `x-refuse-logprobs` makes it refuse the field with a 400
as some OpenAI-compatible servers do. Real servers on loopback, the real `openai` SDK.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from answer_gateway import CHEAP, CHEAP_PROMPT, STRONG, STRONG_ANSWER, USAGE, WITH_FINAL, Gw, gateway
from gateway_upstream import serve_upstream, wait_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from toy_artifact import toy_answer_score, write_toy_pair

from router_model.answer_features import LOGPROB_FEATURES, chat_token_logprobs, logprob_features
from router_model.answer_score import SCORE_FEATURES, SCORE_FEATURES_WITH_LOGPROBS, MissingLogprobsError
from router_model.gateway.call import ChatStreamAnswer, chat_answer_text
from router_model.labelling.cli import main as label_main
from router_model.labelling.config import ShadowConfig
from router_model.labelling.errors import LabellingConfigError
from router_model.offline.row import RowError, parse_line
from router_model.router import Router
from training.escalation import with_escalation
from training.threshold import Goal, ThresholdChoice, ThresholdStage

SURE, UNSURE = -0.01, -1.0  # mean token log-probabilities: toy scores 0.12 and 0.88 for an answer with a final answer


class LogprobUpstream:
    """Chat completions that carry token log-probabilities when asked; records each call's model and `logprobs`."""

    def __init__(self) -> None:
        self.asked: dict[str, list[tuple[str, Any]]] = {}

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.asked.setdefault(request.headers.get("x-test-id", ""), []).append((body["model"], body.get("logprobs")))
        if request.headers.get("x-bad-request"):  # the caller's own mistake, whatever the gateway added
            return JSONResponse({"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error",
                                           "param": "temperature", "code": None}}, status_code=400)
        if "logprobs" in body and request.headers.get("x-refuse-logprobs"):
            return JSONResponse({"error": {"message": "Unrecognized request argument supplied: logprobs",
                                           "type": "invalid_request_error", "param": "logprobs", "code": None}},
                                status_code=400)
        text = STRONG_ANSWER if body["model"] == STRONG else request.headers.get("x-fake-answer", WITH_FINAL)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                  "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs") is True:
            value = float(request.headers.get("x-fake-logprob", SURE))
            choice["logprobs"] = {"content": [{"token": t, "logprob": value, "bytes": list(t.encode()), "top_logprobs": []}
                                              for t in text.split(" ")], "refusal": None}
        return JSONResponse({"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [choice], "usage": USAGE})


@pytest.fixture(scope="module")
def upstream() -> Iterator[LogprobUpstream]:
    with serve_upstream(LogprobUpstream()) as fake:
        yield fake


@pytest.fixture(scope="module")
def logprob_router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    return Router.load(write_toy_pair(tmp_path_factory.mktemp("toy-logprobs") / "router", answer_threshold=0.5,
                                      answer_logprobs=True))


@pytest.fixture(scope="module")
def logprob_gw(upstream, logprob_router, tmp_path_factory) -> Iterator[Gw]:
    yield from gateway(upstream.url, logprob_router, tmp_path_factory.mktemp("gw-logprobs") / "d.jsonl")


def _ask(gw: Gw, tid: str, *, logprob: float, sdk_kwargs: dict[str, Any] | None = None, **headers: str):
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-x", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CHEAP_PROMPT}], **(sdk_kwargs or {}),
        extra_headers={**gw.headers(tid), "x-fake-logprob": str(logprob), **headers})


# ---------------------------------------------------------------- the features and the score


def test_the_features_of_token_logprobs_and_the_wire_shape() -> None:
    values = [-0.01] * 9 + [-2.0]
    row = dict(zip(LOGPROB_FEATURES, logprob_features(values)))
    assert row["logprob_mean"] == pytest.approx(-0.209, abs=1e-3)
    assert row["unsure_token_share"] == pytest.approx(0.1)
    assert row["logprob_tail_mean"] == pytest.approx((7 * -0.01 - 2.0) / 8, abs=1e-6)
    assert list(logprob_features([])) == [0.0] * len(LOGPROB_FEATURES)
    answer = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": 0}]}}]}
    assert chat_token_logprobs(answer) == (-0.5, 0.0)
    assert chat_token_logprobs({"choices": [{"logprobs": None}]}) is None
    assert chat_token_logprobs({"choices": [{"logprobs": {"content": [{"logprob": "x"}]}}]}) is None


def test_a_streamed_answer_keeps_the_logprobs_its_chunks_carry() -> None:
    """A buffered stream whose caller asked for log-probabilities is scored with them (chunk by chunk)."""
    reader = ChatStreamAnswer()
    for piece, value in (("The answer", -0.2), (" is (B).", -0.4)):
        reader.feed({"choices": [{"index": 0, "delta": {"content": piece},
                                  "logprobs": {"content": [{"token": piece, "logprob": value}]}}]})
    reader.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]})
    answer = reader.answer()
    assert answer is not None and reader.ended
    text = chat_answer_text(answer)
    assert text.text == WITH_FINAL and text.token_logprobs == (-0.2, -0.4)
    plain = ChatStreamAnswer()
    plain.feed({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]})
    assert chat_answer_text(plain.answer() or {}).token_logprobs is None


def test_a_score_that_reads_logprobs_refuses_an_answer_without_them(logprob_router: Router) -> None:
    scorer = logprob_router.answer_score
    assert scorer is not None and scorer.needs_logprobs and tuple(scorer.record.features) == SCORE_FEATURES_WITH_LOGPROBS
    with pytest.raises(MissingLogprobsError):
        scorer.score(WITH_FINAL, p_cheap_ok=0.8)
    sure = scorer.score(WITH_FINAL, p_cheap_ok=0.8, token_logprobs=[SURE] * 4)
    unsure = scorer.score(WITH_FINAL, p_cheap_ok=0.8, token_logprobs=[UNSURE] * 4)
    assert sure == pytest.approx(toy_answer_score(True, logprob_mean=SURE), abs=1e-5)
    assert unsure == pytest.approx(toy_answer_score(True, logprob_mean=UNSURE), abs=1e-5) == pytest.approx(0.88, abs=0.01)


def test_the_log_row_keeps_token_logprobs_and_names_a_bad_one() -> None:
    line: dict[str, Any] = {"prompt": "2+2?", "outcomes": {"a": {"passed": True}, "b": {"passed": True}},
                            "grading": {"a": {"answer": "4", "token_logprobs": [-0.25, 0, 3e-7]}}}
    rec = parse_line(json.dumps(line).encode(), line_no=1, default_id="r1", pass_threshold=0.8).record()
    assert dict(rec.token_logprobs) == {"a": (-0.25, 0.0, 0.0)}  # a hair above 0 is float rounding: read as 0
    again = parse_line(json.dumps(rec.to_row(["a", "b"])).encode(), line_no=1, default_id="r1", pass_threshold=0.8)
    assert dict(again.record().token_logprobs) == {"a": (-0.25, 0.0, 0.0)}
    line["grading"]["a"]["token_logprobs"] = [-0.25, 0.7]
    with pytest.raises(RowError) as err:
        parse_line(json.dumps(line).encode(), line_no=3, default_id="r1", pass_threshold=0.8)
    assert err.value.field == "grading.a.token_logprobs[1]" and "<= 0" in str(err.value)


def _stage(n: int) -> ThresholdStage:
    choice = ThresholdChoice(threshold=0.7, goal=Goal.quality_floor(0.95, 0.05), met=True, strong_share=0.5,
                             quality_vs_strong=0.97, cost_per_request=0.5, cost_saved_fraction=0.5, quality=0.8)
    folds = [(np.setdiff1d(np.arange(n), np.arange(k, n, 5)), np.arange(k, n, 5)) for k in range(5)]
    return ThresholdStage(head=None, choice=choice, rows="oof", scores=np.full(n, 0.7), labelled_rows=np.arange(n),
                          folds=folds)


def test_training_reads_logprobs_only_when_every_row_kept_them() -> None:
    """The same answer text on every row: only the log-probabilities tell the cheap model's failures apart."""
    rng = np.random.default_rng(0)
    n, n_test = 1500, 300
    strong = np.ones(n)
    cheap = (rng.random(n) > 0.25).astype(float)
    logprobs = [[UNSURE if c < 0.5 else SURE] * 6 for c in cheap]
    answers = [WITH_FINAL] * n
    lab, test = np.arange(n - n_test), np.arange(n - n_test, n)
    stage = _stage(n - n_test)
    common = {"cheap_passed": cheap, "strong_passed": strong, "cost_cheap": np.full(n, 0.02), "cost_strong": np.ones(n),
              "goal": stage.choice.goal, "test_rows": test, "p_test": np.full(n_test, 0.7)}
    _, esc = with_escalation(stage, answers=answers, token_logprobs=logprobs, **common)
    assert esc is not None and esc.reads_logprobs and tuple(esc.record.features) == SCORE_FEATURES_WITH_LOGPROBS
    assert esc.record.on and "token log-probabilities" in esc.record.reason
    assert esc.record.evaluation["answer_score_auc"] > 0.99
    some: list[list[float] | None] = [t if i % 2 else None for i, t in enumerate(logprobs)]
    _, esc = with_escalation(stage, answers=answers, token_logprobs=some, **common)
    assert esc is not None and not esc.reads_logprobs and tuple(esc.record.features) == SCORE_FEATURES
    assert f"token log-probabilities on {len(lab) // 2} of {len(lab)} cheap answers are left out" in esc.record.reason
    assert len(lab) == 1200


def test_mlflow_and_info_say_whether_the_score_reads_logprobs(logprob_router: Router) -> None:
    from router_model.summary import escalation_line
    from training.tracking import escalation_params

    meta = logprob_router.meta
    assert meta.escalation is not None and escalation_params(meta.escalation)["escalation_reads_logprobs"] is True
    assert "the score reads the cheap answer's token log-probabilities" in (escalation_line(meta) or "")
    plain = replace(meta.escalation, features=SCORE_FEATURES)
    assert escalation_params(plain)["escalation_reads_logprobs"] is False
    assert "log-probabilities" not in (escalation_line(replace(meta, escalation=plain)) or "")


# ---------------------------------------------------------------- the gateway


def test_the_gateway_asks_for_logprobs_scores_them_and_strips_them(logprob_gw: Gw, upstream: LogprobUpstream) -> None:
    for value, escalated in ((SURE, False), (UNSURE, True)):
        tid = uuid.uuid4().hex
        raw = _ask(logprob_gw, tid, logprob=value)
        answer = raw.parse()
        assert answer.choices[0].logprobs is None and json.loads(raw.content)["choices"][0]["logprobs"] is None
        assert answer.choices[0].message.content == (STRONG_ANSWER if escalated else WITH_FINAL)
        # the cheap model was asked for log-probabilities the caller did not ask for; the strong one was not
        assert upstream.asked[tid] == [(CHEAP, True), *([(STRONG, None)] if escalated else [])]
        rec = logprob_gw.record(tid)
        assert rec["answer_score"] == round(toy_answer_score(True, logprob_mean=value), 4)
        assert rec["escalated"] == ("answer_score" if escalated else None)


def test_a_caller_that_asks_for_logprobs_gets_them(logprob_gw: Gw, upstream: LogprobUpstream) -> None:
    tid = uuid.uuid4().hex
    answer = _ask(logprob_gw, tid, logprob=SURE, sdk_kwargs={"logprobs": True}).parse()
    assert answer.choices[0].logprobs is not None
    assert [t.logprob for t in answer.choices[0].logprobs.content] == [SURE] * len(WITH_FINAL.split(" "))
    assert upstream.asked[tid] == [(CHEAP, True)]
    assert logprob_gw.record(tid)["answer_score"] == round(toy_answer_score(True, logprob_mean=SURE), 4)


def test_an_upstream_that_refuses_logprobs_is_asked_again_without_them(upstream, logprob_router, tmp_path) -> None:
    """Its own gateway: the refusal is remembered for LOGPROBS_REFUSED_S, which the other tests must not see."""
    for gw in gateway(upstream.url, logprob_router, tmp_path / "d.jsonl"):
        tid = uuid.uuid4().hex
        raw = _ask(gw, tid, logprob=SURE, **{"x-refuse-logprobs": "1"})
        assert raw.http_response.status_code == 200 and raw.parse().choices[0].message.content == WITH_FINAL
        assert upstream.asked[tid] == [(CHEAP, True), (CHEAP, None)]
        rec = gw.record(tid)
        assert "answer_score" not in rec  # not scored: the score reads what the answer lacks
        assert [(a["model"], a["status"]) for a in rec["attempts"]] == [(CHEAP, 400), (CHEAP, 200)]
        assert gw.metric("router_gateway_answers_unscored_total", reason="no_logprobs") == 1
        again = uuid.uuid4().hex  # the refusal is remembered: the next request goes as the caller sent it
        assert _ask(gw, again, logprob=SURE, **{"x-refuse-logprobs": "1"}).http_response.status_code == 200
        assert upstream.asked[again] == [(CHEAP, None)]
        assert gw.metric("router_gateway_answers_unscored_total", reason="no_logprobs") == 2


def test_a_callers_own_400_does_not_stop_the_asking(upstream, logprob_router, tmp_path) -> None:
    for gw in gateway(upstream.url, logprob_router, tmp_path / "d.jsonl"):
        tid = uuid.uuid4().hex
        with pytest.raises(openai.BadRequestError):
            _ask(gw, tid, logprob=SURE, **{"x-bad-request": "1"})
        assert upstream.asked[tid] == [(CHEAP, True), (CHEAP, None)]  # asked again as sent: the same 400
        after = uuid.uuid4().hex
        assert _ask(gw, after, logprob=SURE).http_response.status_code == 200
        assert upstream.asked[after] == [(CHEAP, True)]  # the field was not the cause: still asked for


def test_an_artifact_whose_score_does_not_read_logprobs_never_asks(upstream, tmp_path) -> None:
    router = Router.load(write_toy_pair(tmp_path / "router", answer_threshold=0.5))
    for gw in gateway(upstream.url, router, tmp_path / "d.jsonl"):
        tid = uuid.uuid4().hex
        assert _ask(gw, tid, logprob=UNSURE).parse().choices[0].message.content == WITH_FINAL
        assert upstream.asked[tid] == [(CHEAP, None)]


# ---------------------------------------------------------------- the labelling


def test_shadow_grading_keeps_the_cheap_answers_logprobs(upstream, tmp_path) -> None:
    """Shadow `logprobs: true` with an artifact whose score does not read them: the gateway asks for
    them on the cheap answer it serves, keeps them in the labelled row and strips them from the caller's."""
    router = Router.load(write_toy_pair(tmp_path / "router"))
    out = tmp_path / "labels.jsonl"
    for gw in gateway(upstream.url, router, tmp_path / "d.jsonl", shadow=ShadowConfig(out=out, logprobs=True)):
        tid = uuid.uuid4().hex
        assert _ask(gw, tid, logprob=-0.5).parse().choices[0].logprobs is None
        assert wait_for(lambda: out.exists() and out.read_text().strip(), timeout=15)
        row = json.loads(out.read_text().splitlines()[0])
        assert row["grading"][CHEAP]["token_logprobs"] == [-0.5] * len(WITH_FINAL.split(" "))
        assert "token_logprobs" not in row["grading"][STRONG]  # the strong answer was asked without them
        assert dict(upstream.asked[tid]) == {CHEAP: True, STRONG: None} and len(upstream.asked[tid]) == 2
    with pytest.raises(LabellingConfigError, match="logprobs needs store_answers"):
        ShadowConfig(out=out, logprobs=True, store_answers=False)


def test_router_label_logprobs_asks_the_cheap_model_only(upstream, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "Name a colour."}]}) + "\n")
    out = tmp_path / "labels.jsonl"
    args = ["--requests", str(requests), "--upstream", upstream.url, "--models", f"{CHEAP},{STRONG}", "--out", str(out),
            "--no-progress", "--logprobs"]
    assert label_main(args) == 0
    row = json.loads(out.read_text())
    assert row["grading"][CHEAP]["token_logprobs"] == [SURE] * len(WITH_FINAL.split(" "))
    assert "token_logprobs" not in row["grading"][STRONG]
    with pytest.raises(SystemExit) as exit_:
        label_main([*args, "--no-answers"])
    assert exit_.value.code == 2
