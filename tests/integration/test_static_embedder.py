"""The static (model2vec) embedder: its ONNX graph computes the masked mean, and a router trained
with it loads in `Router` and routes, through the fp32 and the int8 graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_LOG


def test_static_graph_is_the_masked_normalised_mean() -> None:
    from router_model.onnx_session import make_session
    from training.embedding.static import static_graph

    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(np.float32)
    keep = np.ones(50, dtype=np.float32)
    keep[[0, 1, 2]] = 0.0  # e.g. [PAD], [CLS], [SEP]
    ids = np.array([[1, 5, 9, 9, 2, 0], [1, 7, 2, 0, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=np.int64)
    session = make_session(static_graph(table, keep, normalize=True, output="sentence_embedding").SerializeToString())
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    want = np.stack([table[[5, 9, 9]].mean(0), table[[7]].mean(0)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.fixture(scope="session")
def static_trained(tmp_path_factory, cache_dir: Path, static_embedder: str):
    """A router trained on the example log with `--embedder model2vec` (the distillation is cached per machine)."""
    from training.pipeline import TrainConfig, train

    out = tmp_path_factory.mktemp("model-static") / "router"
    return train(TrainConfig(logs=(EXAMPLE_LOG,), out_dir=out, cache_dir=cache_dir, embedder=static_embedder,
                             heads=("logreg_c1",), track=False, progress=False))


def test_static_router_loads_and_routes(static_trained) -> None:
    from router_model.artifact import FP32, INT8
    from router_model.router import Router

    meta = static_trained.metadata
    assert meta.embedder.name == "model2vec" and meta.embedder.dim == 256
    assert meta.embedder.encoder.model_inputs == ("input_ids", "attention_mask")
    assert meta.parity is not None and meta.parity.fp32_graph_vs_sklearn_max_abs <= 1e-4
    prompts = ["Translate 'thank you' into German.",
               "Prove that every finite integral domain is a field, then generalise the argument to division rings."]
    for graph in (FP32, INT8):
        router = Router.load(static_trained.model_dir, graph=graph)
        decisions = router.predict_batch(prompts)
        assert {d.model for d in decisions} <= {router.cheap_model, router.strong_model}
        assert all(0.0 <= d.p_cheap_ok <= 1.0 and d.reason == "classifier" for d in decisions)
        p = router.p_cheap_ok(prompts)
        assert abs(p[0] - p[1]) > 1e-6  # the embedding reaches the head: different prompts, different scores
    # The whole merged graph is a table lookup and the head: far smaller than MiniLM's 90 MB.
    assert (static_trained.model_dir / "model.onnx").stat().st_size < 40e6
