"""The int8 embedder on the real exported MiniLM: the graph rewrites are exact in fp32, GPTQ rounds
better than nearest, and the shipped recipe is much closer to fp32 than plain dynamic int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE_LOG, require_shared

from training.artifact.gptq import GPTQError, gptq_requantize, gptq_round
from training.artifact.int8_rewrites import (
    normalise_layernorm_inputs,
    row_scaled_tables,
    scale_per_token,
    split_outlier_channels,
    weight_matmuls,
)
from training.artifact.quantize import (
    QuantizationSettings,
    activation_maxima,
    calibration_feeds,
    find_outliers,
    quantize_embedder,
)

MMLU = "routellm-evals/routellm-mmlu.normalized.jsonl"


def _example_prompts() -> list[str]:
    rows = [json.loads(line) for line in EXAMPLE_LOG.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows if "prompt" in r]


def _embed(model: onnx.ModelProto | str, feeds) -> np.ndarray:
    from router_model.onnx_session import make_session
    from training.embedding.common import EMBEDDING_OUTPUT

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


@pytest.mark.parametrize("kw", [{"outlier_ratio": 1.0}, {"outlier_ratio": 0.5}, {"max_outliers": -1},
                                {"gptq_damping": 0.0}, {"gptq_damping": -0.1}])
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


def test_all_fp32_rewrites_together_are_exact(exported) -> None:
    """LayerNorm folding, outlier split and per-token scaling, as quantize_embedder chains them."""
    model = onnx.load(str(exported.onnx_path))
    feeds = calibration_feeds(exported.text_encoder(), _example_prompts(), n=12)
    folded = normalise_layernorm_inputs(model)
    lns = [n for n in folded.graph.node if n.op_type == "LayerNormalization"]
    # embeddings + 2 per layer; each feeding a MatMul (all but the last, which feeds pooling) is now
    # also computed without gain and shift
    assert len(lns) == 13 + 12
    groups = weight_matmuls(folded)
    assert sum(x.startswith("layernorm_fold_") for x in groups) == 12
    amax = activation_maxima(folded, feeds, list(groups))
    split, fp32_nodes = split_outlier_channels(folded, {x: np.sort(np.argsort(-m)[:3]) for x, m in amax.items()})
    scaled = scale_per_token(split, skip_nodes=fp32_nodes)
    assert sum(n.op_type == "ReduceMax" for n in scaled.graph.node) == 24  # int8 inputs only, not the fp32 side path
    ref = _embed(model, feeds)
    for rewritten in (folded, scaled):
        assert np.abs(_embed(rewritten, feeds) - ref).max() < 1e-5


def test_row_scaled_token_table_is_int8_and_close(exported) -> None:
    model = onnx.load(str(exported.onnx_path))
    feeds = calibration_feeds(exported.text_encoder(), _example_prompts(), n=12)
    table = row_scaled_tables(model)
    inits = {i.name: i for i in table.graph.initializer}
    lookups = {n.input[1]: inits[n.input[0]] for n in table.graph.node
               if n.op_type == "Gather" and n.input[0] in inits and inits[n.input[0]].dims[-1] > 1}  # not the row scales
    assert lookups["input_ids"].data_type == onnx.TensorProto.INT8 and lookups["input_ids"].dims == [30522, 384]
    assert [t.data_type for ids, t in lookups.items() if ids != "input_ids"] == [onnx.TensorProto.FLOAT] * 2  # position, token type
    assert table.ByteSize() < model.ByteSize() - 30_000_000  # 30522 x 384 fp32 -> int8
    err = np.abs(_embed(table, feeds) - _embed(model, feeds)).max()
    assert 0 < err < 5e-3


def test_gptq_rounds_better_than_nearest_under_correlated_inputs() -> None:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64))
    x = rng.normal(size=(4000, 64)) @ mix  # correlated channels, as in real activations
    w = rng.normal(size=(64, 32))
    scale = np.abs(w).max(axis=0) / 127.0
    h = x.T @ x / len(x)
    nearest = np.clip(np.round(w / scale), -127, 127)
    q = gptq_round(w, scale, h)
    assert q.dtype == np.int8 and np.abs(q.astype(int) - nearest).max() >= 1
    err_nearest = np.linalg.norm(x @ (w - nearest * scale))
    err_gptq = np.linalg.norm(x @ (w - q * scale))
    assert err_gptq < 0.7 * err_nearest


def test_gptq_refuses_a_graph_without_onnxruntime_int8_weights(exported) -> None:
    model = onnx.load(str(exported.onnx_path))
    with pytest.raises(GPTQError, match="no quantised MatMul weights"):
        gptq_requantize(model, model, [])


def test_int8_recipe_is_much_closer_to_fp32_than_plain_dynamic_int8(exported, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = require_shared(MMLU)
    with src.open(encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for _, line in zip(range(600), f)]
    enc = exported.text_encoder()
    calib, held_out = prompts[::2], calibration_feeds(enc, prompts[1::2], n=120, seed=1)
    feeds = calibration_feeds(enc, calib, n=128, seed=0)
    quantize_dynamic(str(exported.onnx_path), str(tmp_path / "plain.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    shipped = quantize_embedder(exported.onnx_path, feeds)
    # With the LayerNorm gains folded away, MiniLM's outliers sit in the normalised LayerNorm outputs
    # and the feed-forward activations.
    assert 6 <= len(shipped.outlier_channels) <= 24
    assert all(1 <= len(v) <= QuantizationSettings().max_outliers for v in shipped.outlier_channels.values())
    assert all(x.startswith("layernorm_fold_") or "intermediate" in x for x in shipped.outlier_channels)
    ref = _embed(str(exported.onnx_path), held_out)
    err_plain = np.abs(_embed(str(tmp_path / "plain.onnx"), held_out) - ref).mean()
    err_shipped = np.abs(_embed(shipped.model, held_out) - ref).mean()
    print(f"\nmean |int8 - fp32| embedding error on 120 held-out prompts: plain {err_plain:.2e}, shipped {err_shipped:.2e}")
    assert err_shipped < 0.5 * err_plain


def test_trained_artifact_records_how_int8_was_made(trained) -> None:
    q = trained.metadata.quantization
    assert q["calibration_prompts"] > 0 and q["max_outliers"] == QuantizationSettings().max_outliers
    assert q["per_token_scaling"] is True and q["weight_rounding"] == "gptq"
    assert q["inputs_split"] >= 1 and q["outlier_channels"] >= q["inputs_split"]


def test_quantising_does_not_print_onnxruntime_preprocessing_advice(exported, caplog) -> None:
    with caplog.at_level("WARNING"):
        q = quantize_embedder(exported.onnx_path, [])
    ops = [n.op_type for n in q.model.graph.node]
    # int8 MatMuls whose per-token-scaled inputs are quantised with the fixed scale, not per batch
    assert "MatMulInteger" in ops and "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    assert q.summary()["activation_scales"].startswith("static")
    assert q.summary()["weight_rounding"] == "nearest" and q.outlier_channels == {}
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_per_token_scaling_is_exact_on_old_and_new_opsets(opset: int) -> None:
    """ReduceMax's axes moved from an attribute to an input in opset 18; both forms must come out."""
    from onnx import TensorProto, helper, numpy_helper

    from router_model.onnx_session import make_session

    rng = np.random.default_rng(opset)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    scaled = scale_per_token(model)
    assert sum(n.op_type == "ReduceMax" for n in scaled.graph.node) == 1
    x = rng.normal(size=(2, 5, 16)).astype(np.float32) * np.array([1, 10, 0.1, 3, 100], np.float32)[None, :, None]
    x[1, 4] = 0.0  # an all-zero token stays zero instead of NaN
    got = make_session(scaled.SerializeToString()).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
