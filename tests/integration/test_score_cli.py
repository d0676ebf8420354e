"""`python -m router_model score | route | info` in subprocesses, on a real trained model directory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router_model.router import Router

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sentence_transformers", "sklearn", "transformers", "onnx", "skl2onnx", "mlflow", "joblib")

ROWS = [
    {"id": "p1", "prompt": "What is 2 + 2?"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three primes."}]},
    {  # a labelled log row, scored as it is: extra fields ignored
        "id": "example-007", "timestamp": "2025-01-02T10:00:00Z",
        "prompt": "Prove that there are infinitely many primes.",
        "tags": ["math"], "metadata": {"category": "math"}, "input_tokens": 12,
        "outcomes": {"gpt-4o-mini": {"passed": False}, "gpt-4o": {"score": 0.9}},
    },
    None,  # a blank line: skipped, no output line
    {"prompt": "Translate 'good morning' into French.", "tags": ["high-accuracy"]},
    {"id": 42, "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                          {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
    {"id": "ctx", "prompt": "And in Spanish?", "context_turns": ["Translate 'thank you' into French."],
     "source": "x", "label_type": "correctness", "models": {"a": 1.0}},
]
FIELDS = {"line", "id", "model", "p_cheap_ok", "confidence", "margin", "reason"}


@pytest.fixture(scope="module")
def int8_router(model_dir: Path) -> Router:
    return Router.load(model_dir, graph="int8")


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(("" if r is None else (r if isinstance(r, str) else json.dumps(r))) + "\n")
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "ROUTER_MODEL_DIR"}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "router_model", *args], capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})}, cwd=REPO)


def read_out(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def test_score_small_file(model_dir: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "requests.jsonl", ROWS)
    out = tmp_path / "decisions.jsonl"
    res = cli("score", "--model-dir", str(model_dir), "--input", str(inp), "--output", str(out),
              "--graph", "fp32", "--threads", "1", "--batch-size", "2")
    assert res.returncode == 0, res.stderr
    rows = read_out(out)
    assert [r["line"] for r in rows] == [1, 2, 3, 5, 6, 7]
    assert [r["id"] for r in rows] == ["p1", "requests:2", "example-007", "requests:5", "42", "ctx"]
    for r in rows:
        assert set(r) == FIELDS
        assert r["model"] in ("gpt-4o-mini", "gpt-4o")
    by_id = {r["id"]: r for r in rows}
    assert by_id["requests:5"]["reason"] == "tag:high-accuracy" and by_id["requests:5"]["p_cheap_ok"] is None
    assert by_id["42"]["reason"] == "vision" and by_id["42"]["confidence"] == 1.0
    # Same numbers as the library on the same requests (context_turns become chat messages).
    router = Router.load(model_dir, graph="fp32")
    expected = router.predict_batch(
        [ROWS[0]["prompt"], ROWS[1]["messages"], ROWS[2]["prompt"],
         [{"role": "user", "content": ROWS[6]["context_turns"][0]}, {"role": "user", "content": "And in Spanish?"}]],
        tags=[None, None, ["math"], None],
    )
    for rid, d in zip(["p1", "requests:2", "example-007", "ctx"], expected):
        assert by_id[rid]["reason"] == "classifier" == d.reason
        assert by_id[rid]["model"] == d.model
        assert by_id[rid]["p_cheap_ok"] == pytest.approx(d.p_cheap_ok, abs=1e-5)
        assert by_id[rid]["confidence"] == pytest.approx(d.confidence, abs=1e-5)
    assert "scored 6 request(s), 0 invalid" in res.stderr
    assert "scoring" in res.stderr  # the tqdm bar goes to stderr


def test_score_bad_line_stops_with_its_number(model_dir: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], ROWS[1], {"id": "e", "prompt": "   "}, ROWS[2]])
    out = tmp_path / "out.jsonl"
    res = cli("score", "--model-dir", str(model_dir), "--input", str(inp), "--output", str(out), "--no-progress")
    assert res.returncode == 2
    assert f"{inp}:3: prompt: the prompt is empty" in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp*"))  # nothing half-written


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "ok", "messages": []}', ":1: prompt: give either"),
        ('{"id": "x"}', ":1: missing request"),
        ('{"prompt": 5}', ":1: prompt: expected a string"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', ":1: messages[0].role: unknown role"),
        ('{"prompt": "ok", "tags": "a"}', ":1: tags: expected a list of strings"),
        ('{"prompt": "ok", "id": null}', ":1: id: expected"),
        ("[1, 2]", ":1: line: expected a JSON object"),
        ('{"prompt": "cut', ":1: line: invalid JSON"),
    ],
)
def test_score_reports_each_kind_of_bad_line(int8_router: Router, line: str, message: str) -> None:
    from router_model.score import InputLineError, score_stream

    out = io.StringIO()
    with pytest.raises(InputLineError) as exc:
        score_stream(int8_router, io.BytesIO(line.encode() + b"\n"), out, name="in.jsonl", default_id_prefix="in")
    assert str(exc.value).startswith("in.jsonl" + message), str(exc.value)
    assert out.getvalue() == ""


def test_score_skip_invalid_writes_error_lines(model_dir: Path, tmp_path: Path) -> None:
    bad_utf8 = b'{"prompt": "caf\xe9"}'
    inp = tmp_path / "in.jsonl"
    with inp.open("wb") as f:
        for row in [json.dumps(ROWS[0]).encode(), b'{"prompt": ""}', b"not json", bad_utf8,
                    json.dumps(ROWS[4]).encode(), b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}']:
            f.write(row + b"\n")
    out = tmp_path / "out.jsonl"
    res = cli("score", "--model-dir", str(model_dir), "--input", str(inp), "--output", str(out), "--no-progress",
              "--skip-invalid", "--graph", "int8")
    assert res.returncode == 0, res.stderr
    rows = read_out(out)
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]
    errors = {r["line"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {2, 3, 4, 6}
    assert errors[2] == "prompt: the prompt is empty"
    assert errors[3].startswith("line: invalid JSON")
    assert errors[4].startswith("line: not valid UTF-8")
    assert errors[6].startswith("messages[0].content[0].text:")
    assert all(rows[i - 1]["model"] is None for i in errors)
    assert rows[0]["model"] and rows[4]["reason"] == "tag:high-accuracy"
    assert "4 invalid line(s)" in res.stderr and f"{inp}:2: prompt: the prompt is empty" in res.stderr


def test_score_stdin_stdout_and_env_model_dir(model_dir: Path, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if k != "ROUTER_MODEL_DIR"}
    base["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [sys.executable, "-m", "router_model", "score", "--input", "-", "--output", "-", "--no-progress"],
        input='{"prompt": "hello"}\n{"prompt": "bye", "tags": ["vision"]}\n', capture_output=True, text=True,
        timeout=60, env={**base, "ROUTER_MODEL_DIR": str(model_dir)},
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["stdin:1", "stdin:2"] and rows[1]["reason"] == "tag:vision"


def test_usage_errors(model_dir: Path, tmp_path: Path) -> None:
    res = cli("score", "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl"))
    assert res.returncode == 2 and "ROUTER_MODEL_DIR" in res.stderr
    res = cli("score", "--model-dir", str(model_dir), "--input", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "o.jsonl"))
    assert res.returncode == 2 and "absent.jsonl" in res.stderr
    res = cli("score", "--model-dir", str(tmp_path / "no-model"), "--input", "x", "--output", "y")
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = cli("score", "--model-dir", str(model_dir), "--input", "x", "--output", "y", "--batch-size", "0")
    assert res.returncode == 2 and "--batch-size" in res.stderr


def test_route_command(model_dir: Path) -> None:
    prompts = ["What is 2 + 2?", "Prove that every finite integral domain is a field."]
    res = cli("route", "--model-dir", str(model_dir), *prompts)
    assert res.returncode == 0, res.stderr
    out = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert len(out) == 2 and all(d["reason"] == "classifier" and d["model"] in ("gpt-4o-mini", "gpt-4o") for d in out)
    assert set(out[0]) == {"model", "p_cheap_ok", "confidence", "threshold", "reason", "artifact_version", "prompt_tokens",
                           "margin", "centroid_distance", "p_pass", "expected_cost_usd"}
    tagged = cli("route", "--tags", "high-accuracy,other", "Hi", env={"ROUTER_MODEL_DIR": str(model_dir)})
    assert tagged.returncode == 0, tagged.stderr
    assert json.loads(tagged.stdout)["reason"] == "tag:high-accuracy"
    bad = cli("route", "--model-dir", str(model_dir), "   ")
    assert bad.returncode == 2 and "prompt" in bad.stderr


def test_route_chat_messages_images_and_table(model_dir: Path, tmp_path: Path) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]))
    res = cli("route", "--model-dir", str(model_dir), "--messages", str(chat))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["reason"] == "classifier"
    piped = subprocess.run([sys.executable, "-m", "router_model", "route", "--model-dir", str(model_dir), "--messages", "-"],
                           input=json.dumps({"messages": [{"role": "user", "content": "Name a prime."}]}),
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert piped.returncode == 0 and json.loads(piped.stdout)["reason"] == "classifier", piped.stderr
    img = cli("route", "--model-dir", str(model_dir), "--image", "https://example.com/cat.png", "What is in this picture?")
    assert img.returncode == 0 and json.loads(img.stdout)["reason"] == "vision", img.stderr
    table = cli("route", "--model-dir", str(model_dir), "--table", "Classify the sentiment: 'great phone'", "Hi")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["prompt", "model", "confidence"] and len(lines) == 4
    assert "Classify the sentiment" in lines[2] and ("gpt-4o" in lines[2])
    for bad_args in (["--messages", str(tmp_path / "missing.json")], ["--messages", str(chat), "also a prompt"], []):
        bad = cli("route", "--model-dir", str(model_dir), *bad_args)
        assert bad.returncode == 2 and "error" in bad.stderr.lower(), bad_args


def test_info_command(model_dir: Path, trained, tmp_path: Path) -> None:
    res = cli("info", "--model-dir", str(model_dir))
    assert res.returncode == 0, res.stderr
    meta = trained.metadata
    for text in ("cheap=gpt-4o-mini", "strong=gpt-4o", f"{meta.threshold:.4f}", "quality_floor=0.95",
                 meta.artifact_version, "router ", "random ", "heuristic ", "oracle ", "AUC", "onnxruntime", "verified"):
        assert text in res.stdout, text
    js = cli("info", "--model-dir", str(model_dir), "--json")
    assert js.returncode == 0 and json.loads(js.stdout)["artifact_version"] == meta.artifact_version
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        os.symlink(f, broken / f.name)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer.json").write_text("{}")
    res = cli("info", "--model-dir", str(broken))
    assert res.returncode == 2 and "tokenizer.json" in res.stderr and "sha256" in res.stderr


def test_cli_imports_no_training_stack(model_dir: Path, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS)
    code = f"""
import json, sys
from router_model.__main__ import main
rc1 = main(["score", "--model-dir", {str(model_dir)!r}, "--input", {str(inp)!r}, "--output", {str(tmp_path / 'o.jsonl')!r}])
rc2 = main(["route", "--model-dir", {str(model_dir)!r}, "hello"])
rc3 = main(["info", "--model-dir", {str(model_dir)!r}])
heavy = {HEAVY!r}
print(json.dumps([rc1, rc2, rc3, sorted(m for m in sys.modules if m.split(".")[0] in heavy)]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [0, 0, 0, []]


def _peak_rss_mb(args: list[str]) -> tuple[int, float, float]:
    """Run the CLI in a wrapper process; the wrapper reports its only child's peak RSS."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run([sys.executable, '-m', 'router_model', *sys.argv[1:]]).returncode\n"
        "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t]))\n"
    )
    res = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    rc, mb, secs = json.loads(res.stdout.strip().splitlines()[-1])
    assert rc == 0, res.stderr[-2000:]
    return rc, mb, secs


def test_score_streams_in_bounded_memory(model_dir: Path, tmp_path: Path) -> None:
    """20k lines, each carrying a 2 KB ignored field (40 MB of input): memory must not follow the file."""
    notes = "n" * 2000

    def make(n: int) -> Path:
        path = tmp_path / f"in-{n}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"r{i}", "prompt": f"What is {i} plus {i % 7}?", "notes": notes}) + "\n")
        return path

    small, big = make(2_000), make(20_000)
    common = ["--model-dir", str(model_dir), "--graph", "int8", "--threads", "2", "--no-progress"]
    _, small_mb, _ = _peak_rss_mb(["score", "--input", str(small), "--output", str(tmp_path / "o-small.jsonl"), *common])
    t0 = time.perf_counter()
    _, big_mb, secs = _peak_rss_mb(["score", "--input", str(big), "--output", str(tmp_path / "o-big.jsonl"), *common])
    print(f"\npeak RSS: 2k lines {small_mb:.0f} MB, 20k lines {big_mb:.0f} MB; 20k lines scored in {secs:.1f}s "
          f"({time.perf_counter() - t0:.1f}s with the wrapper); input {big.stat().st_size / 1e6:.0f} MB")
    out = (tmp_path / "o-big.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(out) == 20_000
    assert json.loads(out[0])["id"] == "r0" and json.loads(out[-1])["id"] == "r19999"
    assert big_mb < 600, f"peak RSS {big_mb:.0f} MB"
    assert big_mb - small_mb < 40, f"10x the lines grew peak RSS from {small_mb:.0f} to {big_mb:.0f} MB"


def test_score_stream_reports_a_request_refused_by_the_router(model_dir: Path) -> None:
    """An image-only request with the image rule off is refused by the router, not the line parser."""
    from router_model.decision import RoutingRules
    from router_model.score import InputLineError, score_stream

    router = Router.load(model_dir, graph="int8", rules=RoutingRules(image_to_strong=False))
    image_only = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}
    data = "".join(json.dumps(r) + "\n" for r in [ROWS[0], image_only, ROWS[4]]).encode()
    out = io.StringIO()
    report = score_stream(router, io.BytesIO(data), out, name="in.jsonl", default_id_prefix="in", skip_invalid=True)
    rows = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3] and report.invalid == 1 and report.written == 3
    assert rows[1]["error"].startswith("messages: ") and rows[1]["model"] is None
    assert rows[0]["reason"] == "classifier" and rows[2]["reason"] == "tag:high-accuracy"
    with pytest.raises(InputLineError) as exc:
        score_stream(router, io.BytesIO(data), io.StringIO(), name="in.jsonl", default_id_prefix="in")
    assert str(exc.value).startswith("in.jsonl:2: messages: ")
