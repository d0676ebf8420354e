"""`router-train` end to end in subprocesses: evaluation table, model dir, plots, MLflow, cache, bad logs.

Two real training runs in all (the second on a grown log that also carries the broken example rows
with --skip-invalid, so one run checks both the embedding cache and the skip report).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_LOG, REPO

from router_model.router import Router

BAD_LOG = REPO / "data" / "example-log-bad.jsonl"
EXTRA_ROWS = [
    {"id": f"extra-{i}", "prompt": p, "outcomes": {"gpt-4o-mini": {"passed": ok}, "gpt-4o": {"passed": True}}}
    for i, (p, ok) in enumerate(
        [
            ("Convert 72 degrees Fahrenheit to Celsius and show the formula.", True),
            ("Write a SQL query returning the five customers with the highest total order value.", True),
            ("Explain why the halting problem is undecidable, with a diagonal argument.", False),
            ("Rewrite this sentence in the passive voice: 'The committee approved the plan.'", True),
            ("Derive the closed form of the sum of the first n cubes and prove it by induction.", False),
        ]
    )
]


def train_cmd() -> list[str]:
    script = Path(sys.executable).parent / "router-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "training.cli"]


def run_train(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([*train_cmd(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache_dir: Path):
    """router-train on the example log, tracked in a fresh sqlite MLflow store."""
    work = tmp_path_factory.mktemp("train-cli")
    db = work / "mlflow.db"
    out = work / "models" / "router"
    res = run_train(
        "--log", str(EXAMPLE_LOG), "--out", str(out), "--tracking-uri", f"sqlite:///{db}",
        "--cache-dir", str(cache_dir), "--heads", "logreg_c1", "--no-progress", cwd=work,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"res": res, "work": work, "db": db, "out": out, "cache": cache_dir}


def test_train_cli_prints_evaluation_and_writes_a_loadable_model(first_run) -> None:
    out_text = first_run["res"].stdout
    assert "log: 40 rows read, 40 used, 0 skipped" in out_text
    assert "pair: cheap=gpt-4o-mini  strong=gpt-4o" in out_text
    assert re.search(r"Held-out test set: \d+ prompts", out_text)
    for row in ("router", "random", "heuristic", "oracle"):
        assert re.search(rf"^{row}\s+(-?\d+\.\d+\s+){{5}}-?\d+\.\d+$", out_text, re.M), row
    assert "router calibration: AUC" in out_text
    out = first_run["out"]
    router = Router.load(out)
    d = router.predict("What is the capital of France?")
    assert d.model in ("gpt-4o-mini", "gpt-4o") and d.artifact_version == router.version
    report = out.parent / "router-report"
    pngs = sorted(report.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert json.loads((report / "evaluation.json").read_text())["router"]["apgr"] >= 0
    assert not list(out.parent.glob(".router.tmp-*"))  # the atomic write left nothing behind


def test_train_cli_tracks_the_run_in_mlflow(first_run) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{first_run['db']}")
    exp = client.get_experiment_by_name("router-model")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    meta = json.loads((first_run["out"] / "metadata.json").read_text())
    assert run.data.params["data_sha256"] == meta["data"]["sha256"]
    assert run.data.params["artifact_version"] == meta["artifact_version"]
    assert run.data.params["heads"] == "logreg_c1"
    assert run.data.metrics["test.router.apgr"] == pytest.approx(meta["metrics"]["test"]["router"]["apgr"])
    assert "threshold" in run.data.metrics and "rows_used" in run.data.metrics
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "plots"} <= top
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"metadata.json", "model.onnx", "model.int8.onnx", "tokenizer.json"} <= model_files
    versions = client.search_model_versions("name='router-model'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert versions[0].tags.get("artifact_version") == meta["artifact_version"]
    assert f"registered router-model v{versions[0].version}" in first_run["res"].stdout


def test_retrain_on_grown_log_reuses_cache_and_skips_invalid(first_run, tmp_path: Path) -> None:
    """example log + 5 new rows + the broken example rows (--skip-invalid): only new texts are embedded."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r) + "\n" for r in EXTRA_ROWS), encoding="utf-8")
    out = first_run["out"]
    before = json.loads((out / "metadata.json").read_text())["artifact_version"]
    res = run_train(
        "--log", str(EXAMPLE_LOG), "--log", str(extra), "--log", str(BAD_LOG), "--skip-invalid",
        "--cheap", "gpt-4o-mini", "--strong", "gpt-4o", "--out", str(out),
        "--tracking-uri", f"sqlite:///{first_run['db']}", "--cache-dir", str(first_run["cache"]),
        "--heads", "logreg_c1", "--no-progress", cwd=first_run["work"],
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # 40 + 5 + 11 rows read; the one good row of the bad log is used; 10 skipped, counted per reason.
    m = re.search(r"^log: 56 rows read, 46 used, 10 skipped \((.*)\)$", res.stdout, re.M)
    assert m, res.stdout[:2000]
    reasons = dict(part.split(": ") for part in m.group(1).split(", "))
    assert {k: int(v) for k, v in reasons.items()} == {
        "invalid_json": 1, "missing_request": 1, "empty_prompt": 1, "bad_messages": 1, "missing_outcomes": 1,
        "bad_outcome": 2, "bad_field": 1, "not_object": 1, "missing_model": 1,
    }
    # Only the 5 extra prompts and the bad log's one good prompt are new to the embedding cache.
    assert re.search(r"^embedding: 6 new, 40 cached", res.stdout, re.M), res.stdout[:2000]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["artifact_version"] != before and meta["data"]["rows_used"] == 46
    assert meta["data"]["skipped"]["bad_outcome"] == 2
    assert Router.load(out).predict("hello").reason == "classifier"
    assert "registered router-model v2" in res.stdout


def test_sample_rows_trains_on_a_counted_sample(first_run, tmp_path: Path) -> None:
    """--sample-rows: about N rows, whole prompts; the rest counted as not_in_sample, nothing lost silently."""
    out = tmp_path / "sampled"
    res = run_train("--log", str(EXAMPLE_LOG), "--sample-rows", "30", "--out", str(out), "--no-track",
                    "--cache-dir", str(first_run["cache"]), "--heads", "logreg_c1", "--no-progress",
                    cwd=first_run["work"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    m = re.search(r"^sample: (\d+) of the 40 usable rows", res.stdout, re.M)
    assert m, res.stdout[:2000]
    n = int(m.group(1))
    assert 30 <= n < 40
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["data"]["rows_used"] == n and meta["data"]["skipped"]["not_in_sample"] == 40 - n
    assert meta["data"]["rows_read"] == n + sum(meta["data"]["skipped"].values())
    assert sum(meta["data"]["split_rows"].values()) == n


def test_bad_log_without_skip_exits_2_with_line_numbers(tmp_path: Path, cache_dir: Path) -> None:
    res = run_train("--log", str(BAD_LOG), "--out", str(tmp_path / "m"), "--no-track", "--cache-dir", str(cache_dir),
                    "--cheap", "gpt-4o-mini", "--strong", "gpt-4o", cwd=tmp_path, timeout=300)
    assert res.returncode == 2
    err = res.stderr
    assert "router-train: error:" in err
    for line_no in range(2, 12):
        assert f"example-log-bad.jsonl:{line_no}:" in err, line_no
    assert "example-log-bad.jsonl:7: outcomes.gpt-4o-mini: unknown outcome type" in err
    assert "--skip-invalid" in err
    assert not (tmp_path / "m").exists()
