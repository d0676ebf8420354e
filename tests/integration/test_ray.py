"""The Ray Data paths give what the single-process paths give, on a real local Ray.

`python -m router_model score --ray` against `score_file` (one file, a directory of shards, a bad
line), and `router-train --ray`'s embedding step against the local embedder, through the same
cache. Ray is started by the test (`ray.init(num_cpus=2)`) and shut down after the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_LOG

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'router-model[ray]' (the dev extra has it)")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield "auto"  # already initialised: the code under test joins it as it is
    ray.shutdown()


def _requests_file(path: Path, copies: int = 3) -> Path:
    """The example log several times, with ids, a blank line and a line the scorer refuses."""
    rows = [line for line in EXAMPLE_LOG.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines: list[str] = []
    for c in range(copies):
        lines += rows
        lines.append(json.dumps({"id": f"extra-{c}", "prompt": f"Explain recursion to a child, take {c}."}))
        lines.append("")
        lines.append(json.dumps({"prompt": 42}))  # bad: prompt is not a string
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _assert_same(local: list[dict], remote: list[dict]) -> None:
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote):
        assert {k: v for k, v in a.items() if k not in ("p_cheap_ok", "confidence", "margin")} == \
            {k: v for k, v in b.items() if k not in ("p_cheap_ok", "confidence", "margin")}
        for k in ("p_cheap_ok", "confidence", "margin"):
            if a[k] is None:
                assert b[k] is None
            else:
                assert abs(a[k] - b[k]) <= 1e-6, (a, b)


def test_score_on_ray_equals_score_file(local_ray, model_dir: Path, tmp_path: Path) -> None:
    from router_model.router import Router
    from router_model.score import score_file
    from router_model.score_ray import score_with_ray

    src = _requests_file(tmp_path / "requests.jsonl")
    local = score_file(Router.load(model_dir), src, tmp_path / "local.jsonl", batch_size=16, skip_invalid=True,
                       show_progress=False)
    remote = score_with_ray(model_dir, src, tmp_path / "ray.jsonl", address=local_ray, batch_size=16,
                            skip_invalid=True, actors=2, show_progress=False)
    _assert_same(_rows(tmp_path / "local.jsonl"), _rows(tmp_path / "ray.jsonl"))
    assert (local.written, local.invalid, local.blank, local.by_model, local.by_reason, local.first_errors) == \
        (remote.written, remote.invalid, remote.blank, remote.by_model, remote.by_reason, remote.first_errors)
    assert remote.invalid == 3 and remote.blank == 3
    # Real scores, not a constant (a router trained on 40 rows may send everything to one model).
    assert len({round(r["p_cheap_ok"], 6) for r in _rows(tmp_path / "ray.jsonl") if r["p_cheap_ok"] is not None}) > 10


def test_score_on_ray_shards_and_first_bad_line(local_ray, model_dir: Path, tmp_path: Path) -> None:
    from router_model.__main__ import main
    from router_model.router import Router
    from router_model.score import InputLineError, score_file
    from router_model.score_ray import score_with_ray

    shards = tmp_path / "in"
    shards.mkdir()
    whole = _requests_file(tmp_path / "all.jsonl", copies=2).read_text(encoding="utf-8").splitlines(keepends=True)
    (shards / "part-000.jsonl").write_text("".join(whole[:45]), encoding="utf-8")
    (shards / "part-001.jsonl").write_text("".join(whole[45:]), encoding="utf-8")
    common = ["score", "--model-dir", str(model_dir), "--input", str(shards), "--batch-size", "8", "--skip-invalid",
              "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "out-local")]) == 0
    assert main([*common, "--output", str(tmp_path / "out-ray"), "--ray", local_ray, "--ray-actors", "2"]) == 0
    for name in ("part-000.jsonl", "part-001.jsonl"):
        _assert_same(_rows(tmp_path / "out-local" / name), _rows(tmp_path / "out-ray" / name))

    # Without --skip-invalid: the same first bad line as the single-process path, and no output left behind.
    with pytest.raises(InputLineError) as want:
        score_file(Router.load(model_dir), shards / "part-000.jsonl", tmp_path / "x.jsonl", batch_size=8,
                   show_progress=False)
    with pytest.raises(InputLineError) as got:
        score_with_ray(model_dir, shards, tmp_path / "out-stopped", address=local_ray, batch_size=8, actors=2,
                       show_progress=False)
    assert str(got.value) == str(want.value) and got.value.field == "prompt"
    assert list((tmp_path / "out-stopped").iterdir()) == []


def test_ray_embedding_writes_the_same_cache(local_ray, exported, tmp_path: Path) -> None:
    from training.embedding.onnx_embedder import OnnxEmbedder
    from training.embedding.ray_embed import RayOnnxEmbedder

    rows = [json.loads(x) for x in EXAMPLE_LOG.read_text(encoding="utf-8").splitlines() if x.strip()]
    texts = [r["prompt"] for r in rows if "prompt" in r] + [f"Write a haiku about the number {i}." for i in range(60)]
    cache = tmp_path / "cache"
    on_ray = RayOnnxEmbedder(exported, address=local_ray, cache_dir=cache, actors=2)
    got = on_ray.embed(texts)
    assert on_ray.last_stats["embedded"] == len(set(texts))
    on_ray.close()
    want = OnnxEmbedder(exported, threads=1).embed_uncached(texts)
    assert np.abs(got - want).max() < 1e-5
    again = OnnxEmbedder(exported, threads=1, cache_dir=cache)
    cached = again.embed(texts)
    assert again.last_stats["from_cache"] == len(texts)  # the Ray run filled the cache the local path reads
    assert np.array_equal(cached, got)
    again.close()
