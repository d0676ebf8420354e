"""Adversarial input and failed runs: no user file is deleted, a failed run publishes nothing, bad text
is refused with its field, and a consistently tampered or hostile artifact is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE_LOG, REPO

from router_model.artifact import METADATA_FILE, ArtifactMetadata, read_metadata, write_metadata
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.router import Router
from training.artifact.writer import check_replaceable

from .conftest import _train

# ---------------------------------------------------------------- 1-3: the model directory


def test_train_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "my-project"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match="not a router model directory") as e:
        _train(out, cache_dir, seed=0)
    assert str(out) in str(e.value)
    assert time.perf_counter() - t0 < 5, "refused before any training work"
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-project"]  # no temporaries either


def test_replaceable_targets(tmp_path: Path, model_dir: Path) -> None:
    check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    shutil.copytree(model_dir, tmp_path / "old-model")
    check_replaceable(tmp_path / "old-model")  # a router artifact: retraining replaces it
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        check_replaceable(tmp_path / "file")


def test_failed_tracking_publishes_nothing_and_keeps_the_old_model(tmp_path: Path, model_dir: Path, cache_dir: Path) -> None:
    out = tmp_path / "router"
    shutil.copytree(model_dir, out)
    before = read_metadata(out).artifact_version
    with pytest.raises(Exception):  # noqa: B017, PT011 - MLflow's own error type for an unusable store
        _train(out, cache_dir, seed=3, track=True, tracking_uri="sqlite:////proc/nope/x.db")
    assert read_metadata(out).artifact_version == before
    Router.load(out)  # still whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sigterm_during_export_leaves_no_temporary(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "router"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "--log", str(EXAMPLE_LOG), "--out", str(out), "--no-track",
         "--no-progress", "--heads", "logreg_c1", "--cache-dir", str(cache_dir)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name.startswith(".router.tmp-") for p in tmp_path.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before its model directory was staged"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert not out.exists()


# ---------------------------------------------------------------- 4, 7: text that is not text


def test_router_refuses_lone_surrogates_and_control_only_prompts(model_dir: Path) -> None:
    router = Router.load(model_dir)
    for bad in ("\ud800", "\x00" * 50):
        with pytest.raises(InvalidRequestError):
            router.predict(bad)
    with pytest.raises(InvalidRequestError) as e:
        router.predict_batch(["fine", "\ud800"])
    assert e.value.index == 1 and e.value.field == "prompt"


def test_score_cli_skips_a_lone_surrogate_line(model_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "hello"}\n{"prompt": "caf\\ud800"}\n', encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "router_model", "score", "--model-dir", str(model_dir), "--input", str(inp),
         "--output", str(tmp_path / "out.jsonl"), "--skip-invalid", "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0]["model"] is not None and rows[1]["model"] is None and "lone surrogate" in rows[1]["error"]


# ---------------------------------------------------------------- 6, 15: hostile artifacts


def _clone(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


def test_deeply_nested_metadata_is_an_artifact_error(model_dir: Path, tmp_path: Path) -> None:
    d = _clone(model_dir, tmp_path / "m")
    (d / METADATA_FILE).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ArtifactError) as e:
        Router.load(d)
    assert e.value.file == METADATA_FILE and "nested" in str(e.value)


def test_graph_paths_must_stay_inside_the_directory(model_dir: Path, tmp_path: Path) -> None:
    d = _clone(model_dir, tmp_path / "m")
    raw = json.loads((d / METADATA_FILE).read_text())
    raw["graphs"]["fp32"] = "../elsewhere.onnx"
    raw["files"]["../elsewhere.onnx"] = "0" * 64
    (d / METADATA_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        Router.load(d, graph="int8")


def test_every_listed_file_is_verified_not_only_the_served_graph(model_dir: Path, tmp_path: Path) -> None:
    d = _clone(model_dir, tmp_path / "m")
    meta = read_metadata(d)
    served = meta.graphs["fp32"]
    other = meta.graphs["int8"]
    with open(d / other, "r+b") as f:  # corrupt the graph that is NOT served
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(ArtifactError) as e:
        Router.load(d, graph="fp32")
    assert e.value.file == other != served


def test_metadata_round_trips_through_the_schema(model_dir: Path, tmp_path: Path) -> None:
    d = _clone(model_dir, tmp_path / "m")
    meta = read_metadata(d)
    assert ArtifactMetadata.from_dict(meta.to_dict()) == meta
    again = write_metadata(d, meta)
    assert again == meta and json.loads((d / METADATA_FILE).read_text()) == meta.to_dict()
