"""`router-promote` made cheaper without deciding otherwise: the refusals that need no scores come before
any version is scored, and a version's scores on the frozen eval log are cached (training/promote_cache.py).

Toy versions (tests/toy_artifact.py) registered in real sqlite MLflow stores, as tests/unit/test_registry_cache.py
does; the scoring is counted through its seam, `training.promote_scoring.score_log`.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from registry_helpers import CHEAP, STRONG, promote, register
from toy_artifact import write_toy_pair

pytest.importorskip("mlflow")

@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("toys")
    return {"a": write_toy_pair(base / "a", seed=0), "b": write_toy_pair(base / "b", seed=1),
            "c": write_toy_pair(base / "c", seed=2)}


def _prompts(copies: int = 20) -> list[tuple[str, bool, bool]]:
    rows = []
    for i in range(copies):
        rows += [(f"Translate sentence {i} into French.", True, True), (f"Summarise the review {i}.", True, True),
                 (f"Prove the theorem {i} by induction.", False, True), (f"Derive the integral {i}.", False, True),
                 (f"What is the number {i}?", True, True), (f"Write a poem about {i} numbers.", i % 4 != 0, True)]
    return rows


def _eval_log(path: Path, copies: int = 20, rows: list[tuple[str, bool, bool]] | None = None) -> Path:
    lines = [{"id": f"r{i}", "prompt": prompt, "outcomes": {CHEAP: {"passed": c}, STRONG: {"passed": s}}}
             for i, (prompt, c, s) in enumerate(rows if rows is not None else _prompts(copies))]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


@pytest.fixture
def scored(monkeypatch) -> list[str]:
    """The artifact_version of every version scored (every run of its graph over the eval log)."""
    import training.promote_scoring as scoring
    from router_model.artifact import read_metadata

    calls: list[str] = []
    real = scoring.score_log

    def counting(model_dir, logs, **kwargs):
        calls.append(read_metadata(model_dir).artifact_version)
        return real(model_dir, logs, **kwargs)

    monkeypatch.setattr(scoring, "score_log", counting)
    return calls


def _version(model_dir: Path) -> str:
    from router_model.artifact import read_metadata

    return read_metadata(model_dir).artifact_version


def _last_run(uri: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("router-promotion")
    assert exp is not None
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


# ------------------------------------------------------------------------------ the score cache


def test_re_gating_against_the_same_champion_does_not_score_the_champion_again(mlflow_store, toys, tmp_path, capsys, scored) -> None:
    uri, cache = mlflow_store(tmp_path / "store"), tmp_path / "cache"
    log = _eval_log(tmp_path / "eval.jsonl")
    register(uri, toys["a"])
    code, first = promote(capsys, uri, cache, "--eval-log", str(log))
    assert code == 0, first
    assert scored == [_version(toys["a"])]

    register(uri, toys["b"])
    code, second = promote(capsys, uri, cache, "--eval-log", str(log))
    assert code in (0, 3), second
    assert scored == [_version(toys["a"]), _version(toys["b"])]  # v1, the champion, came from the cache
    assert second["champion"] == first["candidate"]  # the same figures as when v1 was scored as the candidate
    holder = "2" if code == 0 else "1"

    register(uri, toys["c"])
    code, third = promote(capsys, uri, cache, "--eval-log", str(log))
    assert code in (0, 3), third
    assert third["champion"]["version"] == holder
    assert scored == [_version(toys["a"]), _version(toys["b"]), _version(toys["c"])]  # the champion never again

    files = sorted((cache / ".promote-scores").iterdir())
    assert len(files) == 3 and all(f.suffix == ".npz" for f in files), files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        with np.load(f, allow_pickle=False) as data:  # numbers and one JSON string: nothing to unpickle
            assert {data[k].dtype.kind for k in data.files} <= {"f", "U"}


def test_cached_scores_are_the_scores(toys, tmp_path, scored) -> None:
    """A cache hit gives the same ModelScore and per-row arrays as scoring with no cache."""
    from router_model.artifact import sha256_file
    from training.promote_cache import ScoreCache
    from training.promote_scoring import read_eval_log, score_model

    log = _eval_log(tmp_path / "eval.jsonl")
    view = read_eval_log(toys["a"], log, "1", eval_log_sha256=sha256_file(log))
    plain, plain_sc = score_model(toys["a"], log, "1", tolerance=0.01)
    cache = ScoreCache(tmp_path / "cache")
    for _ in range(2):
        got, got_sc = score_model(toys["a"], log, "1", tolerance=0.01, view=view, cache=cache)
        assert got == plain
        for name in ("p", "cheap_passed", "strong_passed", "cost_cheap", "cost_strong", "input_tokens", "output_tokens"):
            assert np.array_equal(getattr(got_sc, name), getattr(plain_sc, name)), name
        assert (got_sc.threshold, got_sc.cheap_model, got_sc.strong_model) == (plain_sc.threshold, CHEAP, STRONG)
    assert len(scored) == 2  # the plain one and the first cached one; the second came from the file
    assert (view.rows_seen_in_training, view.overlap_allowance) == (plain.rows_seen_in_training, plain.overlap_allowance)


def test_the_key_names_the_artifact_the_log_and_the_pricing(toys, tmp_path) -> None:
    from router_model.artifact import sha256_file
    from training.promote_cache import score_key
    from training.promote_scoring import read_eval_log

    log = _eval_log(tmp_path / "eval.jsonl")
    other_log = _eval_log(tmp_path / "eval-2.jsonl", copies=10)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {CHEAP: {"input": 0.1, "output": 0.4}}}), encoding="utf-8")

    def key(model: Path, path: Path = log, **pricing) -> str:
        view = read_eval_log(model, path, "1", eval_log_sha256=sha256_file(path), **pricing)
        return score_key(model, eval_log_sha256=view.eval_log_sha256, prices=pricing.get("prices"),
                         price_as=pricing.get("price_as") or {}, pricing=view.pricing)

    base = key(toys["a"])
    assert base == key(toys["a"])
    others = {key(toys["b"]), key(toys["a"], other_log), key(toys["a"], prices=prices),
              key(toys["a"], price_as={CHEAP: "gpt-4.1-nano"})}
    assert base not in others and len(others) == 4


@pytest.mark.parametrize("damage", ["garbage", "rows", "pickle", "key"])
def test_a_corrupt_or_mismatched_file_is_ignored_and_rewritten(toys, tmp_path, scored, caplog, damage) -> None:
    from router_model.artifact import sha256_file
    from training.promote_cache import ScoreCache
    from training.promote_scoring import read_eval_log, score_model

    log = _eval_log(tmp_path / "eval.jsonl")
    view = read_eval_log(toys["a"], log, "1", eval_log_sha256=sha256_file(log))
    cache = ScoreCache(tmp_path / "cache")
    good, _ = score_model(toys["a"], log, "1", tolerance=0.01, view=view, cache=cache)
    [path] = list(cache.dir.iterdir())
    with np.load(path, allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "rows":
        np.savez(path, **{**saved, "p": saved["p"][:-1]})
    elif damage == "pickle":
        np.savez(path, **{**saved, "scalars": np.array([{"key": "x"}], dtype=object)})
    else:  # another key's file under this name
        np.savez(path, **{**saved, "scalars": np.array(json.dumps({**json.loads(str(saved["scalars"])), "key": "0" * 64}))})
    with caplog.at_level(logging.DEBUG, logger="training.promote_cache"):
        again, _ = score_model(toys["a"], log, "1", tolerance=0.01, view=view, cache=cache)
    assert again == good
    assert len(scored) == 2  # scored again
    assert any("ignoring" in r.getMessage() for r in caplog.records), caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with np.load(path, allow_pickle=False) as f:  # rewritten whole
        assert np.array_equal(f["p"], saved["p"])
    score_model(toys["a"], log, "1", tolerance=0.01, view=view, cache=cache)
    assert len(scored) == 2


# ------------------------------------------------------------------------------ refusals before scoring


def test_a_changed_eval_log_is_refused_before_either_version_is_scored(mlflow_store, toys, tmp_path, capsys, scored) -> None:
    uri, cache = mlflow_store(tmp_path / "store"), tmp_path / "cache"
    register(uri, toys["a"])
    assert promote(capsys, uri, cache, "--eval-log", str(_eval_log(tmp_path / "eval.jsonl")))[0] == 0
    register(uri, toys["b"])
    del scored[:]
    code, result = promote(capsys, uri, cache, "--eval-log", str(_eval_log(tmp_path / "changed.jsonl", copies=10)))
    assert code == 3, result
    assert [r.split(":")[0] for r in result["reasons"]] == ["eval log changed"]
    assert "eval.jsonl" in result["reasons"][0]
    assert scored == []
    assert result["candidate"] is None and result["champion"] is None and result["interval"] is None
    assert "not scored" in result["table"] and "REFUSED" in result["table"]
    run = _last_run(uri)  # still recorded: the decision, the table, no score metrics
    assert run.data.tags["router.decision"] == "refused"
    assert dict(run.data.metrics) == {"promoted": 0.0}
    assert run.data.params["scored"] == "False" and run.data.params["eval_rows"] == "60"

    code, result = promote(capsys, uri, cache, "--eval-log", str(tmp_path / "changed.jsonl"), "--force")
    assert code == 0 and result["candidate"] is not None, result  # --force still scores and overrides
    assert result["reasons"][0].startswith("overridden by --force: eval log changed")


def test_an_overlapping_eval_log_is_refused_before_scoring(mlflow_store, toys, tmp_path, capsys, scored) -> None:
    from router_model.artifact import read_metadata, write_metadata
    from router_model.artifact_records import DataRecord
    from router_model.prompt_digest import PromptDigest

    rows = _prompts()
    model = tmp_path / "trained"
    shutil.copytree(toys["a"], model)
    digest = PromptDigest.build([p for p, _, _ in rows[:60]])  # a third of the eval log was trained on
    write_metadata(model, read_metadata(model).replace(data=DataRecord(
        files=("train.jsonl",), sha256="0" * 64, rows_read=60, rows_used=60, skipped={}, split_rows={"train": 60},
        pass_threshold=0.8, trained_prompts=digest)))
    uri, cache = mlflow_store(tmp_path / "store"), tmp_path / "cache"
    register(uri, model)
    code, result = promote(capsys, uri, cache, "--eval-log", str(_eval_log(tmp_path / "eval.jsonl", rows=rows)))
    assert code == 3, result
    assert result["reasons"] == [f"eval log overlaps the training data of v1: 60 of {len(rows)} prompts were trained "
                                 "or validated on (allowance for the prompt digest's false positives: 1)"]
    assert scored == []
    # Held-out rows only: scored and promoted.
    code, result = promote(capsys, uri, cache, "--eval-log", str(_eval_log(tmp_path / "held-out.jsonl", rows=rows[60:])))
    assert code == 0, result
    assert result["candidate"]["rows_seen_in_training"] <= result["candidate"]["overlap_allowance"]
    assert len(scored) == 1


def test_usage_errors_still_come_before_a_refusal_that_needs_no_scores(mlflow_store, toys, tmp_path, capsys, scored) -> None:
    """A changed eval log that scoring could not use at all is still a usage error (exit 2), as before."""
    uri, cache = mlflow_store(tmp_path / "store"), tmp_path / "cache"
    register(uri, toys["a"])
    assert promote(capsys, uri, cache, "--eval-log", str(_eval_log(tmp_path / "eval.jsonl")))[0] == 0
    register(uri, toys["b"])
    del scored[:]
    both_pass = _eval_log(tmp_path / "both-pass.jsonl", rows=[(p, True, True) for p, _, _ in _prompts(5)])
    code, result = promote(capsys, uri, cache, "--eval-log", str(both_pass))
    assert code == 2 and "same mean quality" in result["stderr"], result
    other_pair = tmp_path / "other-pair.jsonl"
    other_pair.write_text(json.dumps({"prompt": "hi", "outcomes": {"a-model": {"passed": True},
                                                                  "b-model": {"passed": False}}}) + "\n")
    code, result = promote(capsys, uri, cache, "--eval-log", str(other_pair))
    assert code == 2 and "eval log" in result["stderr"], result
    assert scored == []


def test_the_bootstrap_check_refuses_exactly_when_the_bootstrap_would() -> None:
    """check_bootstrap draws the resamples paired_bootstrap_apgr draws: the same usage error, without scores."""
    from training.promote_scoring import PromotionUsageError, check_bootstrap, paired_bootstrap_apgr

    # A resample ties (and is skipped) when it draws the rows the cheap model fails as often as those the
    # strong model fails; with 2 resamples, a seed whose both tie is refused.
    cheap, strong = np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0, 1.0])
    p = np.array([0.3, 0.7, 0.5, 0.2])
    outcomes = set()
    for seed in range(200):
        try:
            paired_bootstrap_apgr(p, p[::-1], cheap_passed=cheap, strong_passed=strong, resamples=2, seed=seed)
            expected = "ok"
        except PromotionUsageError:
            expected = "refused"
        try:
            check_bootstrap(cheap, strong, resamples=2, seed=seed)
            got = "ok"
        except PromotionUsageError:
            got = "refused"
        assert got == expected, seed
        outcomes.add(got)
    assert outcomes == {"ok", "refused"}
