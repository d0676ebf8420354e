"""router_model.offline.log and .row: every bad-input case is reported with file, line, field and reason."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from router_model.errors import ConfigError, RouterError
from router_model.offline.log import LogFormatError, LogProblem, ReadOptions, read_logs
from router_model.offline.row import LabelledRecord

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ROUTER_SHARED_DATA") or REPO.parent / "shared" / "data")

CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"


def row(prompt: str = "Classify: 'great phone'", mini: object = True, big: object = True, **extra: object) -> str:
    """A valid Format A line (outcomes given as passed bools unless dicts are passed)."""
    oc = lambda v: {"passed": v} if isinstance(v, bool) else v  # noqa: E731
    obj = {"prompt": prompt, "outcomes": {CHEAP: oc(mini), STRONG: oc(big)}}
    obj.update(extra)
    return json.dumps(obj)


def write(tmp_path: Path, lines: list[str], name: str = "log.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


def problems_of(path_or_paths, **kw) -> tuple[LogProblem, ...]:
    paths = path_or_paths if isinstance(path_or_paths, list) else [path_or_paths]
    with pytest.raises(LogFormatError) as ei:
        read_logs(paths, **kw)
    return ei.value.problems


def only_problem(tmp_path: Path, bad_line: str) -> LogProblem:
    """The single problem when `bad_line` sits on line 2 between two good rows."""
    p = write(tmp_path, [row(), bad_line, row()])
    (prob,) = problems_of(p)
    assert prob.line_no == 2
    assert prob.file == str(p)
    return prob


# ---------------------------------------------------------------- happy path


def test_reads_format_a_prompt_and_messages(tmp_path: Path) -> None:
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]
    p = write(tmp_path, [
        row("Summarize: the meeting moved to May.", True, True, id="r1", tags=["summary"],
            metadata={"category": "summary"}, input_tokens=12, output_tokens=30, timestamp="2025-01-01"),
        json.dumps({"messages": msgs, "outcomes": {CHEAP: {"score": 0.79}, STRONG: {"score": 0.8}}}),
    ])
    res = read_logs([p], models=(CHEAP, STRONG))
    assert (res.rows_read, res.rows_used, dict(res.skipped), res.problems) == (2, 2, {}, ())
    a, b = res.records
    assert isinstance(a, LabelledRecord)
    assert (a.id, a.tags, a.category, a.input_tokens, a.output_tokens) == ("r1", ("summary",), "summary", 12, 30)
    assert a.request == "Summarize: the meeting moved to May." and a.classifier_text == a.request
    assert dict(a.passed) == {CHEAP: True, STRONG: True} and dict(a.scores) == {CHEAP: 1.0, STRONG: 1.0}
    assert b.id == "log:2" and b.line_no == 2 and b.source_file == str(p)
    assert isinstance(b.request, tuple) and b.request[1]["role"] == "user"
    assert b.classifier_text.startswith("what is this?")
    # 0.8 passes the default 0.8 rubric, 0.79 does not
    assert dict(b.passed) == {CHEAP: False, STRONG: True} and b.scores[CHEAP] == pytest.approx(0.79)
    assert res.data_sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_pass_threshold_option(tmp_path: Path) -> None:
    p = write(tmp_path, [row(mini={"score": 0.6}, big={"score": 0.7})])
    rec = read_logs([p], models=(CHEAP, STRONG), options=ReadOptions(pass_threshold=0.65)).records[0]
    assert dict(rec.passed) == {CHEAP: False, STRONG: True}


def test_blank_lines_are_ignored_but_line_numbers_stay_true(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text(row() + "\n\n   \n" + "{oops\n" + row() + "\n", encoding="utf-8")
    (prob,) = problems_of(p)
    assert prob.line_no == 4 and prob.category == "invalid_json"
    res = read_logs([p], options=ReadOptions(skip_invalid=True))
    assert (res.rows_read, res.rows_used, dict(res.skipped)) == (3, 2, {"invalid_json": 1})


def test_data_sha_covers_all_files_in_order(tmp_path: Path) -> None:
    a = write(tmp_path, [row("a")], "a.jsonl")
    b = write(tmp_path, [row("b")], "b.jsonl")
    res = read_logs([a, b])
    assert res.data_sha256 == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert read_logs([b, a]).data_sha256 != res.data_sha256
    assert [r.id for r in res.records] == ["a:1", "b:1"]


# ---------------------------------------------------------------- bad input, one case each


def test_invalid_json(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, '{"prompt": "x", "outcomes": {')
    assert prob.category == "invalid_json" and "invalid JSON" in prob.reason and prob.field is None


def test_invalid_utf8(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_bytes(row().encode() + b"\n" + b'{"prompt": "\xff\xfe"}\n')
    (prob,) = problems_of(p)
    assert prob.line_no == 2 and "UTF-8" in prob.reason


def test_line_not_an_object(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, '["a", "list"]')
    assert prob.category == "not_object" and "list" in prob.reason


def test_missing_request(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, json.dumps({"outcomes": {CHEAP: {"passed": True}, STRONG: {"passed": True}}}))
    assert prob.category == "missing_request" and "neither 'prompt' nor 'messages'" in prob.reason


def test_both_prompt_and_messages(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, row(messages=[{"role": "user", "content": "hi"}]))
    assert prob.category == "missing_request" and "not both" in prob.reason


def test_empty_prompt(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, row("  \n "))
    assert (prob.field, prob.category, prob.reason) == ("prompt", "empty_prompt", "the prompt is empty")


def test_prompt_wrong_type(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, json.dumps({"prompt": 42, "outcomes": {CHEAP: {"passed": True}}}))
    assert prob.field == "prompt" and "string" in prob.reason


@pytest.mark.parametrize(
    ("messages", "field", "needle"),
    [
        ([{"role": "robot", "content": "hi"}], "messages[0].role", "unknown role 'robot'"),
        ([], "messages", "empty"),
        ("hello", "messages", "list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "messages[0].content[0].type", "unknown part type"),
    ],
)
def test_bad_messages(tmp_path: Path, messages: object, field: str, needle: str) -> None:
    obj = {"messages": messages, "outcomes": {CHEAP: {"passed": True}, STRONG: {"passed": True}}}
    prob = only_problem(tmp_path, json.dumps(obj))
    assert prob.category == "bad_messages" and prob.field == field and needle in prob.reason


def test_missing_outcomes(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, json.dumps({"prompt": "Translate 'hello' to French."}))
    assert (prob.field, prob.category) == ("outcomes", "missing_outcomes")


def test_unknown_outcome_type_message(tmp_path: Path) -> None:
    p = write(tmp_path, [row()] * 16 + [row(mini={"grade": 3})], "file.jsonl")
    (prob,) = problems_of(p)
    assert prob.line_no == 17
    assert str(prob) == (
        f"{p}:17: outcomes.gpt-4o-mini: unknown outcome type {{'grade': 3}}; "
        'expected {"passed": bool} or {"score": number in [0,1]}'
    )


@pytest.mark.parametrize(
    ("outcome", "field", "needle"),
    [
        ({"score": 1.5}, "outcomes.gpt-4o-mini.score", "outside [0, 1]"),
        ({"score": -0.1}, "outcomes.gpt-4o-mini.score", "outside [0, 1]"),
        ({"score": "0.9"}, "outcomes.gpt-4o-mini.score", "must be a number"),
        ({"score": True}, "outcomes.gpt-4o-mini.score", "must be a number"),
        ({"passed": "yes"}, "outcomes.gpt-4o-mini.passed", "true or false"),
        ({"passed": 1}, "outcomes.gpt-4o-mini.passed", "true or false"),
        ({"passed": True, "score": 1.0}, "outcomes.gpt-4o-mini", "unknown outcome type"),
        (1.0, "outcomes.gpt-4o-mini", "unknown outcome type"),
    ],
)
def test_bad_outcomes(tmp_path: Path, outcome: object, field: str, needle: str) -> None:
    prob = only_problem(tmp_path, row(mini=outcome))
    assert prob.category == "bad_outcome" and prob.field == field and needle in prob.reason


def test_outcomes_not_an_object(tmp_path: Path) -> None:
    prob = only_problem(tmp_path, json.dumps({"prompt": "x", "outcomes": [1, 2]}))
    assert prob.field == "outcomes" and prob.category == "bad_outcome"


def test_row_lacking_a_chosen_model(tmp_path: Path) -> None:
    bad = json.dumps({"prompt": "x", "outcomes": {CHEAP: {"passed": True}}})
    prob = only_problem(tmp_path, bad)
    assert prob.field == "outcomes.gpt-4o" and prob.category == "missing_model" and "'gpt-4o'" in prob.reason


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tags": "math"}, "tags"),
        ({"tags": ["ok", 3]}, "tags"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"input_tokens": 1.5}, "input_tokens"),
        ({"output_tokens": True}, "output_tokens"),
        ({"output_tokens": "10"}, "output_tokens"),
        ({"metadata": "x"}, "metadata"),
        ({"metadata": {"category": 3}}, "metadata.category"),
        ({"id": 7}, "id"),
        ({"timestamp": {"at": 1}}, "timestamp"),
    ],
)
def test_bad_field_types(tmp_path: Path, extra: dict, field: str) -> None:
    prob = only_problem(tmp_path, row(**extra))
    assert prob.category == "bad_field" and prob.field == field


def test_empty_file(tmp_path: Path) -> None:
    empty = write(tmp_path, [], "empty.jsonl")
    (prob,) = problems_of(empty)
    assert prob.file == str(empty) and prob.line_no == 0 and "no rows" in prob.reason
    # Only blank lines count as empty too; with a good file beside it, skip mode carries on.
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n", encoding="utf-8")
    good = write(tmp_path, [row()], "good.jsonl")
    res = read_logs([blank, good], options=ReadOptions(skip_invalid=True))
    assert res.rows_used == 1 and res.problems[0].file == str(blank)


def test_no_usable_rows_even_when_skipping(tmp_path: Path) -> None:
    p = write(tmp_path, ["{bad", "[1]"])
    with pytest.raises(LogFormatError) as ei:
        read_logs([p], options=ReadOptions(skip_invalid=True))
    assert "no usable rows" in str(ei.value) and len(ei.value.problems) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LogFormatError, match="no such file"):
        read_logs([tmp_path / "nope.jsonl"])


def test_all_problems_collected_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, [row(), "{bad", row("")], "a.jsonl")
    b = write(tmp_path, [row(tags="x"), row()], "b.jsonl")
    probs = problems_of([a, b])
    assert [(Path(p.file).name, p.line_no) for p in probs] == [("a.jsonl", 2), ("a.jsonl", 3), ("b.jsonl", 1)]


def test_error_message_lists_first_problems_total_and_skip_hint(tmp_path: Path) -> None:
    p = write(tmp_path, [row()] + ["{bad"] * 25)
    with pytest.raises(LogFormatError) as ei:
        read_logs([p], options=ReadOptions(max_listed=3))
    err = ei.value
    assert isinstance(err, RouterError)
    assert [q.line_no for q in err.problems] == [2, 3, 4] and err.total == 25
    msg = str(err)
    assert "25 problem" in msg and "22 more" in msg and "--skip-invalid" in msg
    assert f"{p}:2:" in msg and f"{p}:5:" not in msg


def test_skip_mode_counts_every_row(tmp_path: Path) -> None:
    p = write(tmp_path, [
        row(), "{bad", "[1]", row(""), json.dumps({"prompt": "x"}), row(mini={"grade": 1}),
        row(tags=3), json.dumps({"prompt": "x", "outcomes": {STRONG: {"passed": True}}}), row(),
    ])
    res = read_logs([p], models=(CHEAP, STRONG), options=ReadOptions(skip_invalid=True))
    assert res.rows_read == 9 and res.rows_used == 2
    assert dict(res.skipped) == {
        "invalid_json": 1, "not_object": 1, "empty_prompt": 1, "missing_outcomes": 1,
        "bad_outcome": 1, "bad_field": 1, "missing_model": 1,
    }
    assert res.rows_read == res.rows_used + sum(res.skipped.values())
    assert [q.line_no for q in res.problems] == [2, 3, 4, 5, 6, 7, 8]
    assert [r.line_no for r in res.records] == [1, 9]


# ---------------------------------------------------------------- format B


def b_row(id_: str, models: dict, label_type: str = "correctness", **extra: object) -> str:
    obj = {"id": id_, "prompt": f"question {id_}?", "source": "bench/sub", "label_type": label_type, "models": models}
    obj.update(extra)
    return json.dumps(obj)


def test_format_b(tmp_path: Path) -> None:
    p = write(tmp_path, [
        b_row("c1", {"weak": 1.0, "strong": 0.0}, meta={"x": 1}),
        b_row("j1", {"weak": 0.7, "strong": 0.8}, "judge_score_1_10", context_turns=["first turn", "second"]),
        b_row("n1", {"weak": None, "strong": 1.0}),
    ])
    with pytest.raises(LogFormatError) as ei:
        read_logs([p], models=("weak", "strong"))
    (prob,) = ei.value.problems
    assert (prob.line_no, prob.field, prob.category) == (3, "models.weak", "missing_model")

    res = read_logs([p], models=("weak", "strong"), options=ReadOptions(skip_invalid=True))
    c1, j1 = res.records
    assert (c1.id, c1.category, c1.request, c1.tags) == ("c1", "bench/sub", "question c1?", ())
    assert dict(c1.passed) == {"weak": True, "strong": False} and dict(c1.scores) == {"weak": 1.0, "strong": 0.0}
    assert dict(j1.passed) == {"weak": False, "strong": True}
    assert j1.request == (
        {"role": "user", "content": "first turn"},
        {"role": "user", "content": "second"},
        {"role": "user", "content": "question j1?"},
    )
    assert j1.classifier_text.startswith("question j1?")
    assert dict(res.skipped) == {"missing_model": 1}


@pytest.mark.parametrize(
    ("line", "field", "category"),
    [
        (b_row("x", {"weak": 1.0, "strong": 1.0}, "grade"), "label_type", "bad_outcome"),
        (b_row("x", {"weak": 1.2, "strong": 1.0}), "models.weak", "bad_outcome"),
        (b_row("x", {"weak": "1", "strong": 1.0}), "models.weak", "bad_outcome"),
        (b_row("x", [1, 2]), "models", "bad_outcome"),
        (b_row("x", {"weak": 1.0, "strong": 1.0}, context_turns="t"), "context_turns", "bad_field"),
        (json.dumps({"id": "x", "prompt": "", "label_type": "correctness", "models": {}}), "prompt", "empty_prompt"),
    ],
)
def test_format_b_bad_rows(tmp_path: Path, line: str, field: str, category: str) -> None:
    p = write(tmp_path, [b_row("ok", {"weak": 1.0, "strong": 0.0}), line])
    (prob,) = problems_of(p, models=("weak", "strong"))
    assert (prob.line_no, prob.field, prob.category) == (2, field, category)


def test_formats_mix_per_line(tmp_path: Path) -> None:
    p = write(tmp_path, [b_row("b", {CHEAP: 1.0, STRONG: 1.0}), row("a")])
    res = read_logs([p])
    assert [r.id for r in res.records] == ["b", "log:2"]


# ---------------------------------------------------------------- model pair


def test_pair_choice_most_cooccurring_and_cheap_is_weaker(tmp_path: Path) -> None:
    def r3(a: bool, b: bool, c: bool | None = None) -> str:
        oc = {"alpha": {"passed": a}, "beta": {"passed": b}}
        if c is not None:
            oc["gamma"] = {"passed": c}
        return json.dumps({"prompt": "p", "outcomes": oc})

    # alpha+beta co-occur in 4 rows, gamma only in 1; alpha is the stronger one there.
    p = write(tmp_path, [r3(True, False), r3(True, True), r3(True, False), r3(False, False, True)])
    res = read_logs([p])
    assert (res.cheap_model, res.strong_model) == ("beta", "alpha")
    # Named pair is respected as given, even if "cheap" is the better one.
    res2 = read_logs([p], models=("alpha", "beta"))
    assert (res2.cheap_model, res2.strong_model) == ("alpha", "beta")
    # Rows lacking a named model are problems.
    probs = problems_of(p, models=("gamma", "alpha"))
    assert [q.line_no for q in probs] == [1, 2, 3] and probs[0].field == "outcomes.gamma"


def test_named_models_absent(tmp_path: Path) -> None:
    p = write(tmp_path, [row()])
    with pytest.raises(LogFormatError) as ei:
        read_logs([p], models=("claude-haiku", STRONG))
    msg = str(ei.value)
    assert "claude-haiku" in msg and CHEAP in msg and STRONG in msg and "--skip-invalid" not in msg


def test_named_models_must_differ(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_logs([write(tmp_path, [row()])], models=(STRONG, STRONG))


def test_single_model_log(tmp_path: Path) -> None:
    p = write(tmp_path, [json.dumps({"prompt": "x", "outcomes": {"m": {"passed": True}}})])
    with pytest.raises(LogFormatError, match="two models"):
        read_logs([p])


def test_records_are_read_only(tmp_path: Path) -> None:
    rec = read_logs([write(tmp_path, [row()])]).records[0]
    with pytest.raises(TypeError):
        rec.passed[CHEAP] = False  # type: ignore[index]
    with pytest.raises(AttributeError):
        rec.id = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- example files in data/


def test_example_logs() -> None:
    res = read_logs([REPO / "data" / "example-log.jsonl"])
    assert (res.cheap_model, res.strong_model) == (CHEAP, STRONG)
    assert res.rows_used >= 30 and not res.skipped
    assert any(isinstance(r.request, tuple) for r in res.records)
    cheap_pass = sum(r.passed[CHEAP] for r in res.records)
    strong_pass = sum(r.passed[STRONG] for r in res.records)
    assert cheap_pass < strong_pass
    probs = problems_of(REPO / "data" / "example-log-bad.jsonl", options=ReadOptions(max_listed=50))
    assert len(probs) >= 8


# ---------------------------------------------------------------- real public data


def test_smoke_real_shared_files() -> None:
    folder = SHARED / "routellm-evals"
    files = [folder / "routellm-mmlu.normalized.jsonl", folder / "routellm-mtbench.normalized.jsonl"]
    if not all(f.is_file() for f in files):
        pytest.skip(f"public data not found at {folder} (set ROUTER_SHARED_DATA to the shared/data folder)")
    res = read_logs(files)
    assert res.strong_model == "gpt-4-1106-preview"
    assert res.cheap_model == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert res.rows_read == res.rows_used == 14042 + 160
    mt = [r for r in res.records if r.id.startswith("routellm-mtbench")]
    assert len(mt) == 160 and any(isinstance(r.request, tuple) for r in mt)
