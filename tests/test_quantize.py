"""The int8 embedder: outlier channels found on calibration prompts, split off exactly, and the result
closer to fp32 than plain dynamic quantisation, on the real exported MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import EXAMPLE_LOG, require_shared
from training.quantize import (
    QuantizationSettings,
    activation_maxima,
    calibration_feeds,
    find_outliers,
    quantize_embedder,
    split_outlier_channels,
    weight_matmuls,
)

MMLU = "routellm-evals/routellm-mmlu.normalized.jsonl"


@pytest.fixture(scope="module")
def exported(cache_dir: Path):
    from training.embedder import DEFAULT_EMBEDDER, export_embedder

    return export_embedder(DEFAULT_EMBEDDER, cache_dir)


def _example_prompts() -> list[str]:
    rows = [json.loads(line) for line in EXAMPLE_LOG.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows if "prompt" in r]


def _embed(model: onnx.ModelProto | str, feeds) -> np.ndarray:
    from router_model.onnx_session import make_session
    from training.embedder import EMBEDDING_OUTPUT

    src = model if isinstance(model, str) else model.SerializeToString()
    session = make_session(src, threads=2)
    return np.vstack([session.run([EMBEDDING_OUTPUT], dict(f))[0] for f in feeds])


def test_find_outliers_picks_channels_far_above_the_rest() -> None:
    rng = np.random.default_rng(0)
    amax = rng.uniform(1.0, 3.0, size=384)
    amax[[17, 200, 301]] = [28.0, 16.0, 9.0]  # the 90th percentile is ~2.8
    assert find_outliers(amax).tolist() == [17, 200, 301]
    assert find_outliers(amax, QuantizationSettings(max_outliers=1)).tolist() == [17]
    assert find_outliers(amax, QuantizationSettings(outlier_ratio=5.0)).tolist() == [17, 200]
    assert find_outliers(np.full(384, 2.0)).size == 0  # no channel stands out
    assert find_outliers(amax[:5]).size == 0  # too few channels to call any an outlier


@pytest.mark.parametrize("kw", [{"outlier_ratio": 1.0}, {"outlier_ratio": 0.5}, {"max_outliers": -1}])
def test_settings_refuse_meaningless_values(kw) -> None:
    with pytest.raises(ValueError):
        QuantizationSettings(**kw)


def test_split_is_exact_in_fp32(exported) -> None:
    """Splitting x @ W into (x * keep) @ W' + x[:, idx] @ W[idx] must not change the embedding."""
    model = onnx.load(str(exported.onnx_path))
    feeds = calibration_feeds(exported.text_encoder(), _example_prompts(), n=12)
    groups = weight_matmuls(model)
    assert len(groups) == 6 * 4  # MiniLM-L6: QKV, attention output, FFN in, FFN out per layer
    amax = activation_maxima(model, feeds, list(groups))
    # Force a split on every input (the 3 largest channels) so all rewrite paths run.
    outliers = {x: np.sort(np.argsort(-m)[:3]) for x, m in amax.items()}
    split, fp32_nodes = split_outlier_channels(model, outliers)
    matmuls_before = sum(n.op_type == "MatMul" for n in model.graph.node)
    matmuls_after = sum(n.op_type == "MatMul" for n in split.graph.node)
    assert matmuls_after == matmuls_before + 36  # one fp32 side product per weight MatMul
    assert len(fp32_nodes) == 36 + 24  # side MatMuls and the channel gathers
    ref, got = _embed(model, feeds), _embed(split, feeds)
    assert np.abs(ref - got).max() < 1e-5


def test_outlier_split_is_closer_to_fp32_than_plain_dynamic_int8(exported) -> None:
    src = require_shared(MMLU)
    with src.open(encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for _, line in zip(range(600), f)]
    enc = exported.text_encoder()
    calib, held_out = prompts[::2], calibration_feeds(enc, prompts[1::2], n=120, seed=1)
    feeds = calibration_feeds(enc, calib, n=128, seed=0)
    plain = quantize_embedder(exported.onnx_path, [], QuantizationSettings(max_outliers=0))
    split = quantize_embedder(exported.onnx_path, feeds)
    assert plain.outlier_channels == {} and plain.calibration_prompts == 0
    # MiniLM's feed-forward inputs carry a few huge channels; the attention inputs do not.
    assert 6 <= len(split.outlier_channels) <= 12
    assert all(1 <= len(v) <= QuantizationSettings().max_outliers for v in split.outlier_channels.values())
    assert all("intermediate" in x or "attention/output/LayerNorm" in x for x in split.outlier_channels)
    ref = _embed(str(exported.onnx_path), held_out)
    err_plain = np.abs(_embed(plain.model, held_out) - ref).mean()
    err_split = np.abs(_embed(split.model, held_out) - ref).mean()
    print(f"\nmean |int8 - fp32| embedding error on 120 held-out prompts: plain {err_plain:.2e}, split {err_split:.2e}")
    assert err_split < 0.8 * err_plain


def test_trained_artifact_records_how_int8_was_made(trained) -> None:
    q = trained.metadata["quantization"]
    assert q["calibration_prompts"] > 0 and q["max_outliers"] == QuantizationSettings().max_outliers
    assert q["inputs_split"] >= 1 and q["outlier_channels"] >= q["inputs_split"]


def test_quantising_does_not_print_onnxruntime_preprocessing_advice(exported, caplog) -> None:
    with caplog.at_level("WARNING"):
        q = quantize_embedder(exported.onnx_path, [], QuantizationSettings(max_outliers=0))
    assert any(n.op_type == "DynamicQuantizeLinear" for n in q.model.graph.node)
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
