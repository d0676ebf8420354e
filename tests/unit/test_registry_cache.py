"""Registered versions from more than one MLflow store, and `router-promote` on toy versions (issue 25, items
8, 12 and 13), with no trained model: real sqlite MLflow stores in tmp dirs, toy model directories
(tests/toy_artifact.py) registered as `router-train` registers a trained one (a run's `model/` artifact, a
version whose tag `artifact_version` names the directory's artifact_version), and small labelled eval logs
written here (router_model/offline/row.py, format A).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registry_helpers import CHEAP, NAME, STRONG, promote, register
from toy_artifact import write_toy_pair

pytest.importorskip("mlflow")



# ------------------------------------------------------------------------------ helpers


def _eval_log(path: Path, models: tuple[str, str] = (CHEAP, STRONG), copies: int = 20) -> Path:
    """A labelled log the toy pair routes well on: cheap-word prompts both pass, strong-word prompts only the
    strong model passes, neutral prompts both pass, and a few neutral ones only the strong model passes."""
    cheap, strong = models
    rows = []
    for i in range(copies):
        for prompt, c, s in ((f"Translate sentence {i} into French.", True, True),
                             (f"Summarise the review {i}.", True, True),
                             (f"Prove the theorem {i} by induction.", False, True),
                             (f"Derive the integral {i}.", False, True),
                             (f"What is the number {i}?", True, True),
                             (f"Write a poem about {i} numbers.", i % 4 != 0, True)):
            rows.append({"id": f"r{len(rows)}", "prompt": prompt,
                         "outcomes": {cheap: {"passed": c}, strong: {"passed": s}}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _alias(uri: str, alias: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(NAME, alias).version)
    except MlflowException:
        return None


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("toys")
    return {"a": write_toy_pair(base / "a", seed=0), "b": write_toy_pair(base / "b", seed=1)}


# ------------------------------------------------------------------------------ item 12: one cache, two stores


def test_two_stores_never_share_a_cached_version(mlflow_store, toys: dict[str, Path], tmp_path: Path) -> None:
    """Version 1 of store A and version 1 of store B are different models: each is downloaded and served."""
    from router_model.artifact import read_metadata
    from router_model.registry import ModelUri, fetch_version, open_registry

    cache = tmp_path / "cache"
    loaded = {}
    for label in ("a", "b"):
        uri = mlflow_store(tmp_path / f"store-{label}")
        assert register(uri, toys[label]) == "1"
        registry = open_registry(uri)
        version = registry.resolve(ModelUri(NAME, version="1"))
        loaded[label] = read_metadata(fetch_version(registry, version, cache)).artifact_version
    assert loaded == {label: read_metadata(toys[label]).artifact_version for label in ("a", "b")}


def test_a_reset_registry_does_not_reuse_the_old_version_1(mlflow_store, toys: dict[str, Path], tmp_path: Path) -> None:
    """The same tracking URI whose registered model was deleted and registered again: its new version 1 is
    another run's directory, so another cache key."""
    import mlflow

    from router_model.artifact import read_metadata
    from router_model.registry import ModelUri, fetch_version, open_registry

    cache, uri = tmp_path / "cache", mlflow_store(tmp_path / "store")
    seen = []
    for label in ("a", "b"):
        if label == "b":
            mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model(NAME)
        assert register(uri, toys[label]) == "1"
        registry = open_registry(uri)
        seen.append(read_metadata(fetch_version(registry, registry.resolve(ModelUri(NAME, version="1")), cache)).artifact_version)
    assert seen == [read_metadata(toys["a"]).artifact_version, read_metadata(toys["b"]).artifact_version]


def test_the_same_store_spelled_two_ways_shares_its_cache(mlflow_store, toys: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """The key is the store's identity: a relative and an absolute sqlite path to one file are one store."""
    from router_model.registry import ModelUri, fetch_version, open_registry, registry_identity

    uri = mlflow_store(tmp_path / "store")
    register(uri, toys["a"])
    monkeypatch.chdir(tmp_path)
    relative = "sqlite:///store/mlflow.db"
    assert registry_identity(relative) == registry_identity(uri)
    assert registry_identity("http://Host:5000/") == registry_identity("http://user:secret@host:5000")
    assert registry_identity(uri) != registry_identity(f"sqlite:///{tmp_path / 'other.db'}")
    first = fetch_version(open_registry(uri), open_registry(uri).resolve(ModelUri(NAME, version="1")), tmp_path / "c")
    again = fetch_version(open_registry(relative), open_registry(relative).resolve(ModelUri(NAME, version="1")), tmp_path / "c")
    assert first == again


def test_a_download_that_is_not_the_registered_artifact_version_is_refused(mlflow_store, toys: dict[str, Path], tmp_path: Path) -> None:
    """The version's `artifact_version` tag (recorded by training) must name what was downloaded."""
    from router_model.errors import ArtifactError
    from router_model.registry import ModelUri, fetch_version, open_registry

    uri = mlflow_store(tmp_path / "store")
    register(uri, toys["a"], tags={"artifact_version": "not-this-one"})
    registry = open_registry(uri)
    with pytest.raises(ArtifactError, match="not-this-one"):
        fetch_version(registry, registry.resolve(ModelUri(NAME, version="1")), tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / NAME).iterdir()] == []  # nothing refused is left in the cache


def test_training_records_the_artifact_version_serving_checks(toys: dict[str, Path]) -> None:
    from router_model.artifact import read_metadata
    from router_model.registry import ARTIFACT_VERSION_TAG
    from training.tracking import version_tags

    meta = read_metadata(toys["a"])
    assert version_tags(meta)[ARTIFACT_VERSION_TAG] == meta.artifact_version


def test_promote_scores_its_own_stores_version_not_a_cached_one(mlflow_store, toys: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Issue 25 item 12 as measured: a promotion in a second store scored the first store's cached v1."""
    from router_model.artifact import read_metadata

    cache = tmp_path / "cache"
    log = _eval_log(tmp_path / "eval.jsonl")
    for label in ("a", "b"):
        uri = mlflow_store(tmp_path / f"store-{label}")
        register(uri, toys[label])
        code, result = promote(capsys, uri, cache, "--eval-log", str(log))
        assert code == 0, result
        assert result["candidate"]["artifact_version"] == read_metadata(toys[label]).artifact_version


# ------------------------------------------------------------------------------ item 8: another model pair


def test_promote_refuses_a_candidate_trained_on_another_pair_than_the_champion(mlflow_store, toys: dict[str, Path], tmp_path: Path,
                                                                               capsys) -> None:
    uri = mlflow_store(tmp_path / "store")
    log = _eval_log(tmp_path / "eval.jsonl")
    register(uri, toys["a"])
    assert promote(capsys, uri, tmp_path / "cache", "--eval-log", str(log))[0] == 0
    other = write_toy_pair(tmp_path / "other", cheap="mixtral-8x7b-instruct-v0.1", strong="gpt-4-1106-preview")
    register(uri, other)
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(log))
    assert code == 2, result
    assert "mixtral-8x7b-instruct-v0.1" in result["stderr"] and "gpt-4o-mini" in result["stderr"]
    assert _alias(uri, "champion") == "1"


def test_promote_refuses_a_first_candidate_trained_on_another_pair_than_the_eval_log(mlflow_store, tmp_path: Path, capsys) -> None:
    uri = mlflow_store(tmp_path / "store")
    log = _eval_log(tmp_path / "eval.jsonl")
    register(uri, write_toy_pair(tmp_path / "other", cheap="mixtral-8x7b-instruct-v0.1", strong="gpt-4-1106-preview"))
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(log))
    assert code == 2, result
    assert "eval log" in result["stderr"] and "mixtral-8x7b-instruct-v0.1" in result["stderr"]
    assert _alias(uri, "champion") is None


# ------------------------------------------------------------------------------ item 13: pricing a private pair


PRIVATE = ("team-small", "team-large")


def test_promote_prices_a_private_pair_with_the_mapping_the_router_was_trained_with(mlflow_store, tmp_path: Path, capsys) -> None:
    from router_model.artifact import read_metadata, write_metadata

    model = write_toy_pair(tmp_path / "private", cheap=PRIVATE[0], strong=PRIVATE[1])
    write_metadata(model, read_metadata(model).replace(price_as={PRIVATE[0]: CHEAP, PRIVATE[1]: STRONG}))
    uri = mlflow_store(tmp_path / "store")
    register(uri, model)
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(_eval_log(tmp_path / "eval.jsonl", PRIVATE)))
    assert code == 0, result
    assert result["candidate"]["cost_saved"] > 0


def test_promote_takes_price_as(mlflow_store, tmp_path: Path, capsys) -> None:
    uri = mlflow_store(tmp_path / "store")
    register(uri, write_toy_pair(tmp_path / "private", cheap=PRIVATE[0], strong=PRIVATE[1]))
    log = _eval_log(tmp_path / "eval.jsonl", PRIVATE)
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(log))
    assert code == 2 and "no price" in result["stderr"], result  # unpriced names are still refused, with the fix named
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(log),
                            "--price-as", f"{PRIVATE[0]}={CHEAP}", "--price-as", f"{PRIVATE[1]}={STRONG}")
    assert code == 0, result
    assert result["candidate"]["cost_saved"] > 0


def test_promote_takes_a_prices_file(mlflow_store, tmp_path: Path, capsys) -> None:
    uri = mlflow_store(tmp_path / "store")
    register(uri, write_toy_pair(tmp_path / "private", cheap=PRIVATE[0], strong=PRIVATE[1]))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {PRIVATE[0]: {"input": 0.1, "output": 0.4},
                                             PRIVATE[1]: {"input": 2.0, "output": 8.0}}}), encoding="utf-8")
    code, result = promote(capsys, uri, tmp_path / "cache", "--eval-log", str(_eval_log(tmp_path / "eval.jsonl", PRIVATE)),
                            "--prices", str(prices))
    assert code == 0, result
    assert result["candidate"]["cost_saved"] > 0
