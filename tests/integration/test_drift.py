"""Drift on real traffic: the reference a router trained on 3,000 MMLU rows records, the distance it
logs, and `router-drift` on 200 unseen MMLU prompts (no drift) and on RouterBench's code prompts
(drift). PSI by hand, the CLI's usage errors and the rolling gauges on the service's and the
gateway's /metrics (on a toy router): tests/unit/test_drift.py."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_shared

from router_model.observe.decision_log import DecisionLogWriter, decision_record, log_text, read_decision_log
from router_model.observe.drift import DRIFT, MODERATE, REFERENCE_FILE, STABLE
from router_model.observe.drift_cli import EXIT_DRIFT, EXIT_OK, main
from router_model.router import Router

from .conftest import public_sample_rows

ROUTERBENCH = "routerbench-subset/routerbench-subset.normalized.jsonl"
LIVE_ROWS, DRIFT_ROWS = 200, 150


def _rows(relative: str) -> list[dict]:
    with require_shared(relative).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def mmlu_router(public_router, mmlu_lines: list[str]):
    """The public-pair router (3,000 MMLU rows), and LIVE_ROWS MMLU prompts outside its sample as in-distribution traffic."""
    result, _ = public_router
    seen = set(public_sample_rows(mmlu_lines))
    unseen = [i for i in range(len(mmlu_lines)) if i not in seen]
    live = [json.loads(mmlu_lines[i])["prompt"] for i in random.Random(15).sample(unseen, LIVE_ROWS)]
    return result.model_dir, live


@pytest.fixture(scope="module")
def router(mmlu_router) -> Router:
    return Router.load(mmlu_router[0])


def _write_log(router: Router, prompts: list[str], path: Path) -> Path:
    """Route the prompts and log the decisions as the service does (keyed hashes, no prompt text)."""
    with DecisionLogWriter(path, prompt_hash_key=b"drift-test-key-0123456789abcdef") as w:
        for i, d in enumerate(router.predict_batch(prompts)):
            w.write(decision_record(d, request_id=f"r{i}", prompt=log_text(prompts[i]),
                                    cheap_model=router.cheap_model, strong_model=router.strong_model))
    return path


def test_artifact_records_the_reference_and_the_router_logs_distances(mmlu_router, router: Router, tmp_path) -> None:
    model_dir, live = mmlu_router
    meta = router.meta
    assert REFERENCE_FILE in meta.files  # listed, so sha256-verified like every artifact file
    ref = router.drift_reference
    assert ref is not None and ref.embedding is not None
    # centroids fitted on the training split; distributions on the rows the fit never saw
    assert ref.n == meta.data.split_rows["val"] + meta.data.split_rows["test"] and ref.split == "validation+test"
    assert ref.threshold == pytest.approx(meta.threshold)
    assert ref.embedding.centroids.shape == (16, meta.embedding_dim)
    assert 0.005 <= ref.embedding.far_share <= 0.02
    assert sum(ref.p_cheap_ok.shares) == pytest.approx(1.0)
    decisions = router.predict_batch(live[:20])
    assert all(d.centroid_distance is not None and 0 <= d.centroid_distance < 2 for d in decisions)
    # the distance comes from the graph's own embedding output: the same as embedding the text apart
    from router_model.artifact import EMBEDDING_OUTPUT
    from training.embedding.common import EMBEDDING_OUTPUT as EXPORTED

    assert EMBEDDING_OUTPUT == EXPORTED
    one = router.predict(live[0])
    assert one.centroid_distance == pytest.approx(decisions[0].centroid_distance, abs=1e-5)
    records = list(read_decision_log(_write_log(router, live[:5], tmp_path / "d.jsonl")))
    assert all("prompt" not in r and "prompt_hmac" in r for r in records)
    assert [r["centroid_distance"] for r in records] == pytest.approx([d.centroid_distance for d in decisions[:5]])
    assert all(r["prompt_tokens"] > 0 and r["reason"] == "classifier" for r in records)


def test_mmlu_traffic_shows_no_drift(mmlu_router, router: Router, tmp_path, capsys) -> None:
    model_dir, live = mmlu_router
    log = _write_log(router, live, tmp_path / "mmlu.jsonl")
    code = main(["--log", str(log), "--model-dir", str(model_dir), "--json"])
    out = json.loads(capsys.readouterr().out)
    print(json.dumps(out, indent=1))
    assert code == EXIT_OK, out
    assert out["status"] in (STABLE, MODERATE) and out["n_records"] == LIVE_ROWS
    assert all(q["band"] != DRIFT and q["n"] > 0 for q in out["quantities"])
    assert not any(s["drifted"] for s in out["shares"])


def test_routerbench_traffic_shows_drift(mmlu_router, router: Router, tmp_path) -> None:
    model_dir, _ = mmlu_router
    code_prompts = [r["prompt"] for r in _rows(ROUTERBENCH) if r["source"] == "routerbench/mbpp"][:DRIFT_ROWS]
    log = _write_log(router, code_prompts, tmp_path / "mbpp.jsonl")
    # the installed console script, as an alert job would run it
    done = subprocess.run([shutil.which("router-drift") or "router-drift", "--log", str(log), "--model-dir", str(model_dir)],
                          capture_output=True, text=True, timeout=120)
    print(done.stdout)
    assert done.returncode == EXIT_DRIFT, done.stdout + done.stderr
    assert "status: drift (exit 3)" in done.stdout
    bands = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines()
             if line.split() and line.split()[0] in ("p_cheap_ok", "prompt_tokens", "centroid_distance")}
    assert bands["centroid_distance"] == DRIFT and bands["prompt_tokens"] == DRIFT
    assert "far_share" in done.stdout and "DRIFT" in done.stdout
