"""Offline labelling (`router-label`) and the rubric, against a real local OpenAI-compatible upstream.

The upstream (tests/gateway_upstream.py) answers as both models and as the judge, with scores
derived from the answers, so every grade below is deterministic. Nothing is mocked: real HTTP,
a real `router-label` subprocess killed mid-run, the real labelled-log reader.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest
from gateway_upstream import FakeUpstream

from router_model.cost import PriceTable
from router_model.dollars import request_cost
from router_model.encoder import estimate_tokens
from router_model.gateway.server import ServerThread
from router_model.labelling.cli import main as label_main
from router_model.labelling.config import GradingSpec
from router_model.labelling.errors import LabellingConfigError
from router_model.labelling.judge import JUDGE_OUTPUT_TOKENS, parse_verdict
from router_model.labelling.rubric import Rubric
from router_model.labelling.upstream import retry_after_seconds
from router_model.labelling.writer import LabelsWriter, existing_hashes, request_hash, ungraded_path

REPO = Path(__file__).resolve().parents[2]
CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


def _requests(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _prompts(n: int) -> list[dict]:
    """Half easy prompts (both models pass), half 'prove' prompts (the fake cheap model is unsure)."""
    out = []
    for i in range(n):
        if i % 2:
            out.append({"prompt": f"Prove that the sum of the first {i} odd numbers is {i} squared."})
        else:
            out.append({"prompt": f"Classify ticket #{i} as billing, shipping or technical: 'I was charged {i} times.'"})
    return out


def _label(upstream, tmp_path: Path, requests: Path, *extra: str, out: Path | None = None) -> int:
    out = out or tmp_path / "labels.jsonl"
    return label_main(["--requests", str(requests), "--upstream", upstream.url, "--models", f"{CHEAP},{STRONG}",
                       "--judge", STRONG, "--out", str(out), "--no-progress", *extra])


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("text, problem", [
    ('{"score": 8, "reason": "ok"}', None),
    ('  {"score": 10}\n', None),
    ("I would give it an 8.", "not a JSON object"),
    ('```json\n{"score": 8, "reason": "x"}\n```', "not a JSON object"),
    ('[8]', "not an object"),
    ('{"score": "8", "reason": "x"}', "must be an integer"),
    ('{"score": 7.5, "reason": "x"}', "must be an integer"),
    ('{"score": true, "reason": "x"}', "must be an integer"),
    ('{"score": 0, "reason": "x"}', "outside 1-10"),
    ('{"score": 11, "reason": "x"}', "outside 1-10"),
    ('{"reason": "no score"}', "no 'score'"),
    ('{"score": 8, "reason": "x", "confidence": 1}', "unexpected key"),
    ('{"score": 8, "reason": 3}', "'reason' must be a string"),
])
def test_verdicts_are_parsed_strictly(text, problem):
    verdict = parse_verdict(text)
    if problem is None:
        assert verdict.score in (8, 10) and verdict.problem is None
    else:
        assert verdict.score is None and problem in (verdict.problem or "")


def test_unparsable_verdicts_are_no_outcome_never_guessed(upstream, tmp_path, capsys):
    from router_model.offline.log import read_logs

    kinds = ("garbage", "out-of-range", "string", "extra-key", "fenced")
    rows = [{"prompt": f"Summarise this note fake-verdict:{k}"} for k in kinds] + [{"prompt": "Summarise the weather report."}]
    assert _label(upstream, tmp_path, _requests(tmp_path / "req.jsonl", rows)) == 0
    labels, ungraded = _rows(tmp_path / "labels.jsonl"), _rows(ungraded_path(tmp_path / "labels.jsonl"))
    assert len(labels) == 1 and labels[0]["outcomes"] == {CHEAP: {"score": 0.9}, STRONG: {"score": 0.9}}
    assert len(ungraded) == len(kinds)
    for row in ungraded:
        assert row["outcomes"] == {}  # no score was made up from "a solid 8 out of 10"
        for model in (CHEAP, STRONG):
            assert row["ungraded"][model].startswith("unparsable verdict:")
            assert row["grading"][model]["judge_score"] is None and row["grading"][model]["judge_raw"]
    # The labels file itself trains as is; the ungraded file is refused by the reader, naming the gap.
    assert read_logs([tmp_path / "labels.jsonl"], models=(CHEAP, STRONG)).rows_used == 1
    with pytest.raises(ValueError, match="outcomes"):
        read_logs([ungraded_path(tmp_path / "labels.jsonl")], models=(CHEAP, STRONG))
    # Resume skips the ungraded requests too, unless asked to retry them.
    assert _label(upstream, tmp_path, tmp_path / "req.jsonl") == 0
    assert "6 already labelled" in capsys.readouterr().err


# ---------------------------------------------------------------- the labelled log


def test_rows_are_a_labelled_log_router_train_reads_as_is(upstream, tmp_path):
    from router_model.offline.log import ReadOptions, read_logs

    rows = _prompts(6) + [{"prompt": "Say the magic word.", "reference": "answer from gpt-4o", "tags": ["ref"]}]
    assert _label(upstream, tmp_path, _requests(tmp_path / "req.jsonl", rows)) == 0
    out = tmp_path / "labels.jsonl"
    read = read_logs([out], models=(CHEAP, STRONG))
    assert read.rows_used == len(rows) and not read.skipped
    by_prompt = {r.request[0]["content"]: r for r in read.records}
    easy, hard, ref = by_prompt[rows[0]["prompt"]], by_prompt[rows[1]["prompt"]], by_prompt["Say the magic word."]
    assert easy.scores == {CHEAP: 0.9, STRONG: 0.9} and easy.passed == {CHEAP: True, STRONG: True}
    assert hard.scores == {CHEAP: 0.3, STRONG: 0.9} and hard.passed == {CHEAP: False, STRONG: True}
    # The reference check failed the cheap answer before any judge call; the strong one matched it.
    assert ref.scores == {CHEAP: 0.0, STRONG: 0.9} and ref.tags == ("ref",)
    raw = {r["messages"][0]["content"]: r for r in _rows(out)}["Say the magic word."]
    assert raw["grading"][CHEAP]["failed_check"] == "reference_exact" and "judge_cost_usd" not in raw["grading"][CHEAP]
    assert raw["input_tokens"] == 120 and raw["output_tokens"] == 30  # from the upstream's usage
    # A stricter pass threshold (router-train --pass-threshold) fails the 0.9 answers.
    strict = read_logs([out], models=(CHEAP, STRONG), options=ReadOptions(pass_threshold=0.95))
    assert not any(r.passed[STRONG] for r in strict.records)


def test_labels_file_is_0600_and_a_wider_file_is_tightened(upstream, tmp_path):
    old = os.umask(0o022)
    try:
        assert _label(upstream, tmp_path, _requests(tmp_path / "req.jsonl", _prompts(1))) == 0
        assert stat.S_IMODE((tmp_path / "labels.jsonl").stat().st_mode) == 0o600
        wide = tmp_path / "wide.jsonl"
        wide.write_text("")
        wide.chmod(0o644)
        LabelsWriter(wide).close()
        assert stat.S_IMODE(wide.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_torn_last_row_is_cut_on_open(tmp_path, caplog):
    path = tmp_path / "labels.jsonl"
    good = json.dumps({"request_hash": "sha256:aa", "outcomes": {}}) + "\n"
    path.write_text(good + '{"request_hash": "sha256:bb", "outco')
    assert existing_hashes(path) == {"sha256:aa"}
    with LabelsWriter(path) as w:
        w.write({"request_hash": "sha256:cc"})
    assert path.read_text() == good + '{"request_hash":"sha256:cc"}\n'
    assert "torn" in caplog.text


# ---------------------------------------------------------------- cost


def test_cost_estimate_is_two_answers_plus_two_judge_calls(upstream, tmp_path, capsys):
    rows = _prompts(4)
    assert _label(upstream, tmp_path, _requests(tmp_path / "req.jsonl", rows), "--estimate-only") == 0
    err = capsys.readouterr().err
    prices = PriceTable.load()
    template = Rubric(GradingSpec(judge=STRONG)).template
    expected = 0.0
    for r in rows:
        inp = estimate_tokens(r["prompt"])
        for m in (CHEAP, STRONG):
            expected += request_cost(prices.price(m), inp, 250)
            expected += request_cost(prices.price(STRONG), estimate_tokens(template) + inp + 250, JUDGE_OUTPUT_TOKENS)
    assert f"estimated cost ${expected:.4f}" in err and "two answers + two judge calls" in err
    assert not (tmp_path / "labels.jsonl").exists()


def test_max_cost_stops_before_the_cap_and_a_rerun_goes_on(upstream, tmp_path, capsys):
    req = _requests(tmp_path / "req.jsonl", _prompts(10))
    assert _label(upstream, tmp_path, req, "--estimate-only") == 0
    total = float(capsys.readouterr().err.split("estimated cost $")[1].split()[0])
    cap = total * 0.3  # in-flight requests reserve their estimate (4x the fake upstream's real cost)
    assert _label(upstream, tmp_path, req, "--max-cost", f"{cap:.6f}", "--concurrency", "2") == 3
    err = capsys.readouterr().err
    rows = _rows(tmp_path / "labels.jsonl")
    assert 0 < len(rows) < 10 and "stopped at --max-cost" in err
    spent = sum(r["labelling_cost_usd"] for r in rows)
    assert spent <= cap
    assert _label(upstream, tmp_path, req) == 0
    rows = _rows(tmp_path / "labels.jsonl")
    assert len(rows) == 10 and len({r["request_hash"] for r in rows}) == 10


def test_unpriced_model_is_refused_naming_the_fix(upstream, tmp_path, capsys):
    req = _requests(tmp_path / "req.jsonl", _prompts(1))
    assert label_main(["--requests", str(req), "--upstream", upstream.url, "--models", "my-ft,gpt-4o",
                       "--out", str(tmp_path / "l.jsonl")]) == 2
    assert "--price-as 'my-ft=gpt-4o'" in capsys.readouterr().err


# ---------------------------------------------------------------- retries, bad input


def test_429_is_retried_honouring_retry_after(upstream, tmp_path):
    started = time.monotonic()
    assert _label(upstream, tmp_path, _requests(tmp_path / "req.jsonl", [{"prompt": "fake-flaky:1 What is 2+2?"}])) == 0
    assert time.monotonic() - started >= 1.0  # the upstream said retry-after: 1
    (row,) = _rows(tmp_path / "labels.jsonl")
    assert row["outcomes"] == {CHEAP: {"score": 0.9}, STRONG: {"score": 0.9}}


def test_retry_after_forms():
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert 3 <= retry_after_seconds(formatdate(time.time() + 5, usegmt=True)) <= 5  # type: ignore[operator]


def test_bad_request_lines_are_named(upstream, tmp_path, capsys):
    req = tmp_path / "req.jsonl"
    req.write_text('{"prompt": "ok"}\n{"prompt": ""}\nnot json\n{"prompt": "x", "reference": 3}\n')
    assert _label(upstream, tmp_path, req) == 2
    err = capsys.readouterr().err
    assert "3 bad line(s)" in err and f"{req}:2: prompt: the prompt is empty" in err
    assert f"{req}:3:" in err and f"{req}:4: reference: expected a string" in err


# ---------------------------------------------------------------- custom checks


CUSTOM = '''
def needs_digits(request, response):
    """The team's rule: an answer must contain a number."""
    text = response["choices"][0]["message"]["content"] or ""
    return True if any(c.isdigit() for c in text) else "no number in the answer"

def broken(request, response):
    raise RuntimeError("boom")

def sloppy(request, response):
    return None
'''


def test_custom_check_from_config(upstream, tmp_path, monkeypatch):
    (tmp_path / "team_checks.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    req = _requests(tmp_path / "req.jsonl", [{"prompt": "Summarise the release notes."}])
    assert _label(upstream, tmp_path, req, "--check", "team_checks:needs_digits") == 0
    (row,) = _rows(tmp_path / "labels.jsonl")
    # Both fake answers name a model with a 4 in it: the check passes and the judge decides.
    assert row["outcomes"] == {CHEAP: {"score": 0.9}, STRONG: {"score": 0.9}}

    rubric = Rubric(GradingSpec(custom_checks=("team_checks:needs_digits", "team_checks:broken")))
    no_digits = {"choices": [{"message": {"content": "no numbers here"}, "finish_reason": "stop"}]}
    result = rubric.check({"messages": []}, no_digits)
    assert result.failed == "team_checks:needs_digits" and result.detail == "no number in the answer"
    with_digits = {"choices": [{"message": {"content": "42"}, "finish_reason": "stop"}]}
    assert "raised RuntimeError: boom" in (rubric.check({"messages": []}, with_digits).error or "")
    sloppy = Rubric(GradingSpec(custom_checks=("team_checks:sloppy",)))
    assert "returned None" in (sloppy.check({"messages": []}, with_digits).error or "")

    out2 = tmp_path / "l2.jsonl"
    assert _label(upstream, tmp_path, req, "--check", "team_checks:broken", out=out2) == 0
    (bad,) = _rows(ungraded_path(out2))  # a check that cannot run is no outcome
    assert "raised RuntimeError" in bad["ungraded"][CHEAP]


def test_custom_check_spec_errors_are_clear(tmp_path):
    with pytest.raises(LabellingConfigError, match="cannot import module 'no_such_module_xyz'"):
        Rubric(GradingSpec(custom_checks=("no_such_module_xyz:f",)))
    with pytest.raises(LabellingConfigError, match="has no attribute 'nope'"):
        Rubric(GradingSpec(custom_checks=("json:nope",)))
    with pytest.raises(LabellingConfigError, match="expected 'module:function'"):
        GradingSpec(custom_checks=("json.loads",))
    bad = tmp_path / "rubric.md"
    bad.write_text("Grade {{answer}} please")
    with pytest.raises(LabellingConfigError, match=r"lacks the placeholder\(s\) \['\{\{question\}\}'\]"):
        Rubric(GradingSpec(judge=STRONG, rubric=bad))


def test_judge_prompt_fills_placeholders_once():
    rubric = Rubric(GradingSpec(judge=STRONG))
    prompt = rubric.judge_prompt([{"role": "user", "content": "what is {{answer}}?"}], "It is {{question}}.")
    assert "what is {{answer}}?" in prompt and "It is {{question}}." in prompt


# ---------------------------------------------------------------- resume after kill


@pytest.fixture()
def slow_upstream():
    fake = FakeUpstream(delay=0.15)
    server = ServerThread(fake.app()).start()
    fake.url = server.url + "/v1"  # type: ignore[attr-defined]
    yield fake
    server.stop()


def test_resume_after_kill_no_torn_line_no_duplicate(slow_upstream, tmp_path):
    from router_model.offline.log import read_logs

    n = 24
    req = _requests(tmp_path / "req.jsonl", _prompts(n))
    out = tmp_path / "labels.jsonl"
    cmd = [sys.executable, "-m", "router_model.labelling", "--requests", str(req), "--upstream", slow_upstream.url,
           "--models", f"{CHEAP},{STRONG}", "--judge", STRONG, "--out", str(out), "--concurrency", "3", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 4):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    data = out.read_bytes()
    first = data.count(b"\n")
    assert 4 <= first < n, "the run was not killed mid-way"
    assert data.endswith(b"\n")  # whole rows only
    assert all(json.loads(line) for line in data.splitlines())
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{first} already labelled" in resumed.stderr
    rows = _rows(out)
    hashes = [r["request_hash"] for r in rows]
    assert len(rows) == n and len(set(hashes)) == n
    assert set(hashes) == {request_hash(r["prompt"]) for r in _prompts(n)}
    assert read_logs([out], models=(CHEAP, STRONG)).rows_used == n
    assert math.isclose(sum(r["labelling_cost_usd"] for r in rows), n * rows[0]["labelling_cost_usd"], rel_tol=1e-9)
