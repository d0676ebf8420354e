"""Serving computes what training fit: ONNX graph vs sklearn, exported embedder vs sentence-transformers,
and int8 vs fp32 decisions on a router trained on public data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_LOG

from router_model.router import Router
from training.artifact.writer import INT8_MAX_APGR_DIFF, INT8_MIN_AGREEMENT

from .conftest import PUBLIC_CHEAP as CHEAP
from .conftest import PUBLIC_STRONG as STRONG

TEXTS = [
    "What is the capital of France?",
    "Write a Python function that merges two sorted lists in O(n) time and explain its complexity.",
    "Résumé: la réunion est déplacée à jeudi 15h; apportez les chiffres du T3.",
    "Prove that sqrt(2) is irrational.\nA. by contradiction\nB. by induction\nAnswer:",
    "ok",
]


def _pipeline_inputs(trained, cache_dir: Path):
    """Rebuild the training pipeline's view of the example log: records, dataset, X and the fitted head."""
    from router_model.cost import PriceTable
    from router_model.offline.log import ReadOptions, read_logs
    from training.data.dataset import build_dataset
    from training.embedding.export import export_embedder
    from training.embedding.features import feature_matrix
    from training.embedding.onnx_embedder import OnnxEmbedder
    from training.pipeline import TrainConfig

    meta = trained.metadata
    config = TrainConfig(
        logs=(EXAMPLE_LOG,),
        out_dir=trained.model_dir,
        seed=0,  # as tests/integration/conftest.py's `trained`
        heads=(meta.head,),
        target=meta.target,
        features=meta.features,
        calibration=meta.calibration,
        truncation=meta.embedder.encoder.truncation,
        cache_dir=cache_dir,
        track=False,
        progress=False,
    )
    read = read_logs(config.logs, options=ReadOptions(pass_threshold=config.pass_threshold))
    exported = export_embedder(config.embedder, cache_dir, truncation=config.truncation)  # cached export
    assert exported.spec == meta.embedder
    embedder = OnnxEmbedder(exported, threads=2)  # no embedding cache: computed afresh
    ds = build_dataset(read, embedder.encoder, PriceTable.load(config.prices), fractions=config.split, seed=config.seed)
    X = feature_matrix(embedder.embed_uncached(ds.texts), ds.texts, ds.n_tokens, features=config.features)
    return read, ds, X, trained.head


def test_fp32_graph_matches_sklearn_pipeline(trained, cache_dir: Path) -> None:
    read, ds, X, head = _pipeline_inputs(trained, cache_dir)
    p_sklearn = head.p_cheap_ok(X)
    router = Router.load(trained.model_dir, graph="fp32")
    p_graph = router.p_cheap_ok([r.request for r in read.records])
    diff = float(np.abs(p_graph - p_sklearn).max())
    print(f"\nfp32 graph vs sklearn pipeline on {len(p_graph)} example prompts: max abs diff {diff:.2e}")
    assert diff < 1e-4
    assert len(np.unique(np.round(p_sklearn, 6))) > 1
    assert trained.metadata.parity.fp32_graph_vs_sklearn_max_abs < 1e-4


def test_exported_embedder_matches_sentence_transformers(cache_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from training.embedding.common import DEFAULT_EMBEDDER, resolve_model_path
    from training.embedding.export import export_embedder
    from training.embedding.onnx_embedder import OnnxEmbedder

    st = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDER), device="cpu")
    ref = st.encode(TEXTS, convert_to_numpy=True)
    got = OnnxEmbedder(export_embedder(DEFAULT_EMBEDDER, cache_dir), threads=2).embed_uncached(TEXTS)
    diff = float(np.abs(ref - got).max())
    print(f"\nexported embedder vs sentence-transformers on {len(TEXTS)} texts: max abs diff {diff:.2e}")
    assert ref.shape == got.shape == (len(TEXTS), 384)
    assert diff < 1e-4


# --- public data: int8 vs fp32 on a real held-out split ------------------------------------------
@pytest.fixture(scope="module")
def int8_report(public_router) -> dict:
    """int8 vs fp32 on the public router's held-out split, measured here through the serving path."""
    from router_model.offline import metrics as M
    from router_model.offline.log import read_logs
    from router_model.offline.split import assign_splits, normalize_prompt

    result, subset = public_router
    meta = result.metadata
    assert (meta.cheap_model, meta.strong_model) == (CHEAP, STRONG)
    read = read_logs([subset], models=(CHEAP, STRONG))
    split = assign_splits([normalize_prompt(r.classifier_text) for r in read.records], fractions=(0.7, 0.15, 0.15), seed=0)
    test = [r for r, s in zip(read.records, split) if s == "test"]
    assert len(test) == meta.data.split_rows["test"] > 300
    requests = [r.request for r in test]
    w = np.array([float(r.passed[CHEAP]) for r in test])
    s = np.array([float(r.passed[STRONG]) for r in test])
    p32 = Router.load(result.model_dir, graph="fp32", threads=2).p_cheap_ok(requests)
    p8 = Router.load(result.model_dir, graph="int8", threads=2).p_cheap_ok(requests)
    t = meta.threshold
    agreement = float(np.mean((p8 >= t) == (p32 >= t)))
    apgr32, apgr8 = M.apgr(1 - p32, w, s), M.apgr(1 - p8, w, s)
    report = {
        "n_test": len(test),
        "threshold": t,
        "int8_decision_agreement": agreement,
        "apgr_fp32": apgr32,
        "apgr_int8": apgr8,
        "apgr_abs_diff": abs(apgr8 - apgr32),
        "max_abs_p_diff": float(np.abs(p8 - p32).max()),
        "default_graph": meta.default_graph,
        "parity": meta.parity.to_dict(),
    }
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in report.items() if k != "parity"}
    print("\nint8 vs fp32 on the held-out split of a 3,000-row RouteLLM MMLU sample: " + json.dumps(shown))
    return report


def test_int8_figures_match_the_pipeline_and_pick_the_default(int8_report: dict) -> None:
    r = int8_report
    # The pipeline measured the same rows the same way and recorded it in metadata.json.
    assert r["int8_decision_agreement"] == pytest.approx(r["parity"]["int8_decision_agreement"], abs=1e-9)
    assert r["apgr_abs_diff"] == pytest.approx(r["parity"]["int8_apgr_abs_diff"], abs=1e-6)
    meets = r["int8_decision_agreement"] >= INT8_MIN_AGREEMENT and r["apgr_abs_diff"] <= INT8_MAX_APGR_DIFF
    # `--graph auto`: int8 is served by default only when it meets the bar.
    assert r["default_graph"] == ("int8" if meets else "fp32")


def test_int8_close_to_fp32_on_public_test_split(int8_report: dict) -> None:
    """The issue's bar (99% of decisions, APGR within 0.005) on a small public sample.

    The int8 graph (training/quantize.py) moves p_cheap_ok by ~0.0007 on average; only prompts
    whose fp32 score lies within a few thousandths of the threshold can flip (plain dynamic int8:
    ~97% agreement on the public router, benchmarks/quantization.py).
    """
    r = int8_report
    assert r["int8_decision_agreement"] >= 0.99, r
    assert r["apgr_abs_diff"] <= INT8_MAX_APGR_DIFF, r
    assert r["max_abs_p_diff"] <= 0.015, r


def test_decision_confidence_is_calibrated_on_the_public_test_split(public_router) -> None:
    """`confidence` (P(the chosen model does at least as well)) has its own calibration, beside p_cheap_ok's."""
    result, _ = public_router
    r = result.evaluation["router"]
    print(f"\npublic router test split: p_cheap_ok ECE {r['ece']:.3f}; confidence ECE {r['confidence_ece']:.3f} "
          f"(mean {r['confidence_mean']:.3f}, observed {r['chosen_at_least_as_good']:.3f})")
    assert r["ece"] < 0.08 and r["confidence_ece"] < 0.08
    assert abs(r["confidence_mean"] - r["chosen_at_least_as_good"]) < 0.05
    # A strong decision is confident when the cheap model rarely wins alone: mean confidence is high.
    assert r["confidence_mean"] > 0.8
