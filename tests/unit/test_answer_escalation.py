"""The gateway escalates a cheap answer on the artifact's learned answer score (issue 26, serving side).

The router is the toy pair with the toy answer score (tests/toy_artifact.py `write_toy_pair(answer_threshold=0.5)`):
"Translate this sentence into French." routes cheap (p_cheap_ok 0.80); the score is 0.88 for an answer that
states no final answer and 0.12 for one that does ("The answer is (B)."), so at 0.5 the first is escalated
and the second kept. The upstream is a small local server (below) whose cheap model answers the text of the
request's `x-fake-answer` header (the gateway passes it through) and whose strong model always answers
STRONG_ANSWER; real gateway and upstream servers, real HTTP, nothing mocked.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from answer_gateway import CHEAP, CHEAP_PROMPT, NO_FINAL, STRONG, STRONG_ANSWER, USAGE, WITH_FINAL, Gw, gateway
from gateway_upstream import serve_upstream
from service_helpers import channel, router_stub, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from toy_artifact import toy_answer_score, toy_answer_score_graph, write_toy_pair

from router_model.__main__ import main as router_model_main
from router_model.artifact import read_metadata, write_metadata
from router_model.errors import ArtifactError
from router_model.gateway.anthropic import messages_answer_text
from router_model.gateway.call import AnswerText, Call, chat_answer_text
from router_model.gateway.cli import build_parser
from router_model.gateway.config import load_config
from router_model.gateway.responses import responses_answer_text
from router_model.gateway.routed import CHECK_ANSWER_SCORE
from router_model.gateway.tracing import call_attributes
from router_model.observe.decision_log import record_problem
from router_model.router import Router
from router_model.service.config import ServerConfig
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.summary import escalation_line, metadata_summary

# ---------------------------------------------------------------- the local upstream


class AnswerUpstream:
    """Chat completions (JSON and SSE), the Responses API and Anthropic Messages; records the models asked."""

    def __init__(self) -> None:
        self.asked: dict[str, list[str]] = {}

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
        ])

    async def _read(self, request: Request) -> tuple[dict[str, Any], str]:
        body = json.loads(await request.body())
        self.asked.setdefault(request.headers.get("x-test-id", ""), []).append(body["model"])
        text = STRONG_ANSWER if body["model"] == STRONG else request.headers.get("x-fake-answer", NO_FINAL)
        return body, text

    async def chat(self, request: Request) -> Response:
        body, text = await self._read(request)
        if body.get("stream"):
            return StreamingResponse(self._chunks(body["model"], text), media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        return JSONResponse({"id": "chatcmpl-x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE})

    async def _chunks(self, model: str, text: str) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": model}
        for piece in (text[:5], text[5:]):
            yield b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": piece}}]}).encode() + b"\n\n"
        yield b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def responses(self, request: Request) -> Response:
        body, text = await self._read(request)
        item = {"type": "message", "id": "msg_x", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        return JSONResponse({"id": f"resp_{uuid.uuid4().hex[:8]}", "object": "response", "status": "completed",
                             "model": body["model"], "output": [item],
                             "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}})

    async def messages(self, request: Request) -> Response:
        body, text = await self._read(request)
        return JSONResponse({"id": "msg_x", "type": "message", "role": "assistant", "model": body["model"],
                             "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                             "usage": {"input_tokens": 10, "output_tokens": 5}})


@pytest.fixture(scope="module")
def answers() -> Iterator[AnswerUpstream]:
    with serve_upstream(AnswerUpstream()) as fake:
        yield fake


# ---------------------------------------------------------------- the artifact and the gateways


@pytest.fixture(scope="module")
def score_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_pair(tmp_path_factory.mktemp("toy-score") / "router", answer_threshold=0.5)


@pytest.fixture(scope="module")
def score_router(score_dir: Path) -> Router:
    return Router.load(score_dir)


@pytest.fixture(scope="module")
def route_gw(answers, score_router, tmp_path_factory) -> Iterator[Gw]:
    yield from gateway(answers.url, score_router, tmp_path_factory.mktemp("gw-score") / "d.jsonl")


@pytest.fixture(scope="module")
def off_gw(answers, score_router, tmp_path_factory) -> Iterator[Gw]:
    yield from gateway(answers.url, score_router, tmp_path_factory.mktemp("gw-score-off") / "d.jsonl", answer_score=False)


def _chat(text: str | None = None, *, stream: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": CHEAP_PROMPT}]}
    if stream:
        body["stream"] = True
    return body, ({"x-fake-answer": text} if text is not None else {})


def _escalations(gw: Gw) -> float:
    return gw.metric("router_gateway_escalations_total", check=CHECK_ANSWER_SCORE)


def _scored(gw: Gw, mode: str = "route") -> float:
    return gw.metric("router_gateway_answer_score_count", mode=mode)


# ---------------------------------------------------------------- route mode


def test_the_toy_prompt_routes_cheap(score_router: Router) -> None:
    d = score_router.predict([{"role": "user", "content": CHEAP_PROMPT}])
    assert d.model == CHEAP and d.p_cheap_ok == pytest.approx(0.80, abs=0.01)


def test_a_cheap_answer_without_a_final_answer_is_escalated(route_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    before, scored = _escalations(route_gw), _scored(route_gw)
    body, headers = _chat(NO_FINAL)
    resp = route_gw.post("/v1/chat/completions", body, tid, **headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == STRONG_ANSWER
    assert resp.headers["x-router-escalated"] == CHECK_ANSWER_SCORE
    assert resp.headers["x-router-model"] == STRONG
    assert answers.asked[tid] == [CHEAP, STRONG]
    rec = route_gw.record(tid)
    assert rec["escalated"] == CHECK_ANSWER_SCORE and rec["served_model"] == STRONG
    assert rec["answer_score"] == round(toy_answer_score(False), 4) == 0.8808
    assert [a["model"] for a in rec["attempts"]] == [CHEAP, STRONG]
    assert _escalations(route_gw) == before + 1
    assert _scored(route_gw) == scored + 1


def test_a_cheap_answer_with_a_final_answer_is_kept(route_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    before, scored = _escalations(route_gw), _scored(route_gw)
    body, headers = _chat(WITH_FINAL)
    resp = route_gw.post("/v1/chat/completions", body, tid, **headers)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == WITH_FINAL
    assert "x-router-escalated" not in resp.headers
    assert answers.asked[tid] == [CHEAP]
    rec = route_gw.record(tid)
    assert rec["escalated"] is None and rec["answer_score"] == round(toy_answer_score(True), 4) == 0.1192
    assert _escalations(route_gw) == before
    assert _scored(route_gw) == scored + 1


def test_a_failed_fast_check_escalates_first_and_is_not_scored(route_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    body, headers = _chat("I'm sorry, but I can't help with that.")  # the `refusal` check fails before any score
    resp = route_gw.post("/v1/chat/completions", body, tid, **headers)
    assert resp.headers["x-router-escalated"] == "refusal"
    rec = route_gw.record(tid)
    assert rec["escalated"] == "refusal" and "answer_score" not in rec


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/responses", {"model": "auto", "input": CHEAP_PROMPT}),
    ("/v1/messages", {"model": "auto", "max_tokens": 100, "messages": [{"role": "user", "content": CHEAP_PROMPT}]}),
])
def test_responses_and_messages_answers_are_scored_too(route_gw: Gw, answers: AnswerUpstream, path: str,
                                                       body: dict[str, Any]) -> None:
    for text, escalated in ((NO_FINAL, True), (WITH_FINAL, False)):
        tid = uuid.uuid4().hex
        resp = route_gw.post(path, body, tid, **{"x-fake-answer": text})
        assert resp.status_code == 200, resp.text
        assert resp.headers.get("x-router-escalated") == (CHECK_ANSWER_SCORE if escalated else None)
        assert answers.asked[tid] == ([CHEAP, STRONG] if escalated else [CHEAP])
        assert route_gw.record(tid)["answer_score"] == round(toy_answer_score(not escalated), 4)


def test_streamed_answers_are_not_scored(route_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    before, scored = _escalations(route_gw), _scored(route_gw)
    body, headers = _chat(NO_FINAL, stream=True)
    with httpx.stream("POST", f"{route_gw.url}/v1/chat/completions", content=json.dumps(body).encode(), timeout=30,
                      headers={"content-type": "application/json", "x-test-id": tid, "x-request-id": tid, **headers}) as resp:
        assert resp.status_code == 200
        text = resp.read().decode()
    assert "Bonjo" in text and STRONG_ANSWER not in text
    assert answers.asked[tid] == [CHEAP]
    rec = route_gw.record(tid)
    assert rec["stream"] is True and rec["escalated"] is None and "answer_score" not in rec
    assert (_escalations(route_gw), _scored(route_gw)) == (before, scored)


def test_observe_mode_forwards_the_model_asked_and_never_escalates(route_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    body, headers = _chat(NO_FINAL)
    resp = route_gw.post("/v1/chat/completions", body, tid, **headers, **{"x-router-mode": "observe"})
    assert resp.status_code == 200 and "x-router-escalated" not in resp.headers
    assert answers.asked[tid] == [STRONG]  # the alias goes to the strong model: no cheap answer to score
    rec = route_gw.record(tid)
    assert rec["mode"] == "observe" and "answer_score" not in rec


def test_no_answer_score_turns_it_off(off_gw: Gw, answers: AnswerUpstream) -> None:
    tid = uuid.uuid4().hex
    body, headers = _chat(NO_FINAL)
    resp = off_gw.post("/v1/chat/completions", body, tid, **headers)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == NO_FINAL
    assert "x-router-escalated" not in resp.headers
    assert answers.asked[tid] == [CHEAP]
    assert "answer_score" not in off_gw.record(tid)
    assert _scored(off_gw) == 0


def test_the_flag_and_the_config_key(tmp_path: Path) -> None:
    assert build_parser().parse_args([]).answer_score is None
    assert build_parser().parse_args(["--no-answer-score"]).answer_score is False
    assert load_config(upstream_url="http://up/v1").answer_score is True
    assert load_config(upstream_url="http://up/v1", answer_score=False).answer_score is False
    path = tmp_path / "gw.toml"
    path.write_text('[upstream]\nbase_url = "http://up/v1"\n\n[checks]\nrefusal = false\nanswer_score = false\n')
    config = load_config(path)
    assert config.answer_score is False and config.checks.refusal is False
    path.write_text('[upstream]\nbase_url = "http://up/v1"\n\n[checks]\nanswer_score = "no"\n')
    with pytest.raises(Exception, match="checks.answer_score"):
        load_config(path)


def test_a_plain_toy_pair_scores_nothing(answers: AnswerUpstream, router: Router, tmp_path: Path) -> None:
    assert router.answer_score is None
    for gw in gateway(answers.url, router, tmp_path / "d.jsonl"):
        tid = uuid.uuid4().hex
        body, headers = _chat(NO_FINAL)
        resp = gw.post("/v1/chat/completions", body, tid, **headers)
        assert resp.status_code == 200 and "x-router-escalated" not in resp.headers
        assert "answer_score" not in gw.record(tid)


# ---------------------------------------------------------------- what each protocol scores


def test_answer_text_of_each_protocol() -> None:
    chat = {"choices": [{"message": {"content": "The answer is 4."}, "finish_reason": "length"}]}
    assert chat_answer_text(chat) == AnswerText("The answer is 4.", "length")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool_answer = chat_answer_text({"choices": [{"message": {"content": None, "tool_calls": [call]}}]})
    assert tool_answer.text == json.dumps([call]) and tool_answer.tool_calls  # read, but not scored
    assert not chat_answer_text(chat).tool_calls
    assert chat_answer_text({}) == AnswerText("", None)
    cut = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "Par"}, {"type": "output_text", "text": "tial"}]}]}
    assert responses_answer_text(cut) == AnswerText("Partial", "length")
    assert responses_answer_text({"status": "completed", "output": []}) == AnswerText("", None)
    msg = {"content": [{"type": "text", "text": "A"}, {"type": "tool_use", "id": "t"}, {"type": "text", "text": "B"}],
           "stop_reason": "max_tokens"}
    assert messages_answer_text(msg) == AnswerText("AB", "max_tokens")
    assert messages_answer_text({"content": [], "stop_reason": "end_turn"}) == AnswerText("", None)
    assert messages_answer_text({"content": [{"type": "tool_use", "id": "t"}]}).tool_calls
    assert responses_answer_text({"output": [{"type": "function_call", "name": "f"}]}).tool_calls


# ---------------------------------------------------------------- loading the artifact


def test_router_load_sets_the_answer_score(score_router: Router, toy_model_dir: Path) -> None:
    scorer = score_router.answer_score
    assert scorer is not None and scorer.threshold == 0.5
    assert score_router.meta.format_version == 3
    assert scorer.escalate(scorer.score(NO_FINAL, p_cheap_ok=0.8))
    assert not scorer.escalate(scorer.score(WITH_FINAL, p_cheap_ok=0.8))
    assert Router.load(toy_model_dir).answer_score is None


def test_a_wrong_answer_score_hash_is_refused(score_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "router"
    shutil.copytree(score_dir, bad)
    (bad / "answer_score.onnx").write_bytes(toy_answer_score_graph(width=3))  # metadata.json keeps the old sha256
    with pytest.raises(ArtifactError) as err:
        Router.load(bad)
    assert "answer_score.onnx" in str(err.value)


def test_an_answer_score_of_the_wrong_width_is_refused(score_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "router"
    shutil.copytree(score_dir, bad)
    (bad / "answer_score.onnx").write_bytes(toy_answer_score_graph(width=3))
    write_metadata(bad, read_metadata(bad))  # hashes recorded afresh: only the width is wrong
    with pytest.raises(ArtifactError, match="takes 3 features"):
        Router.load(bad)


# ---------------------------------------------------------------- info and GetModelInfo


def test_info_prints_the_escalation_line(score_dir: Path, toy_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert router_model_main(["info", "--model-dir", str(score_dir)]) == 0
    assert "escalation: on (cascade, escalate when answer score >= 0.5)" in capsys.readouterr().out
    plain = read_metadata(toy_model_dir)
    assert escalation_line(plain) is None and "escalation:" not in metadata_summary(plain, toy_model_dir)
    meta = read_metadata(score_dir)
    from dataclasses import replace

    off = replace(meta, escalation=replace(meta.escalation, on=False, family="route",
                                           reason="no cascade beat routing alone"))
    assert escalation_line(off) == "escalation: off (no cascade beat routing alone)"


def test_get_model_info_has_the_escalation_fields(score_dir: Path, toy_model_dir: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    for model_dir, expected in ((score_dir, (True, 0.5, "cascade")), (toy_model_dir, (False, 0.0, ""))):
        config = ServerConfig(model_dir=model_dir, host="127.0.0.1", port=0, workers=1)
        caplog.clear()
        with caplog.at_level("WARNING", logger="router_model.service"), serve(config) as running:
            assert running.wait_until_ready(30)
            with channel(running) as ch:
                info = router_stub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                router_stub(ch).Route(pb.RouteRequest(prompt="hi"), timeout=10)
                router_stub(ch).Route(pb.RouteRequest(prompt="hi again"), timeout=10)
        assert (info.escalation_on, info.answer_threshold, info.escalation_family) == expected
        # decisions only: the caller must escalate, and the service says so once per artifact
        warned = [r for r in caplog.records if "returns decisions only" in r.getMessage()]
        assert len(warned) == (1 if expected[0] else 0)


# ---------------------------------------------------------------- the span and the log line


def test_the_span_attribute_and_the_log_field() -> None:
    call = Call(request_id="r", body={}, raw=b"", requested="auto", stream=False, mode="route", in_headers={}, started=0.0)
    assert "router.answer_score" not in call_attributes(call)
    call.answer_score = 0.8808
    assert call_attributes(call)["router.answer_score"] == 0.8808
    line = {"ts": "2026-12-07T12:00:00.000Z", "prompt_tokens": 3, "model": CHEAP, "cheap_model": CHEAP,
            "strong_model": STRONG, "reason": "classifier"}
    assert record_problem({**line, "answer_score": 0.8808}) is None
    assert record_problem({**line, "answer_score": None}) is None
    assert "answer_score" in (record_problem({**line, "answer_score": 1.5}) or "")
    assert "answer_score" in (record_problem({**line, "answer_score": True}) or "")
