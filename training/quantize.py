"""Dynamic int8 quantisation of the embedder, with outlier input channels kept in fp32.

onnxruntime's dynamic int8 MatMul quantises each activation tensor with a single scale. In BERT-style
encoders a few input channels of the feed-forward layers are 5-10x larger than the rest (MiniLM: max
~28 against a 90th percentile of ~3), so that one scale spends most of the 8 bits on them and the
other channels lose precision. As in LLM.int8() (Dettmers et al., 2022), those channels are found on
calibration prompts, zeroed on the int8 path, and their small contribution is computed in fp32 and
added back: x @ W = (x * keep) @ W_int8 + x[:, outliers] @ W[outliers]. The split is exact in fp32;
on the public router it cuts the int8 graph's error (mean |delta p_cheap_ok| 0.0033 -> 0.0019) for
about 0.3 ms per 64-token decision (benchmarks/quantization.py).
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# A channel is an outlier when its calibration max |x| exceeds OUTLIER_RATIO times the 90th percentile
# of the input's channel maxima. 3x keeps MiniLM's feed-forward outliers (4-10x) and leaves the
# attention inputs (at most ~2.7x, where splitting cost latency and bought nothing) on plain int8.
OUTLIER_RATIO = 3.0
MAX_OUTLIERS = 8  # per input tensor: the fp32 side product stays tiny
CALIBRATION_PROMPTS = 256


@dataclass(frozen=True)
class QuantizationSettings:
    """How the int8 graph was made; recorded in metadata.json."""

    outlier_ratio: float = OUTLIER_RATIO
    max_outliers: int = MAX_OUTLIERS

    def __post_init__(self) -> None:
        if not self.outlier_ratio > 1.0:
            raise ValueError(f"outlier_ratio must be > 1, got {self.outlier_ratio}")
        if self.max_outliers < 0:
            raise ValueError(f"max_outliers must be >= 0, got {self.max_outliers}")


@dataclass(frozen=True)
class QuantizedEmbedder:
    model: onnx.ModelProto
    settings: QuantizationSettings
    calibration_prompts: int
    outlier_channels: dict[str, list[int]]  # MatMul input tensor -> channels computed in fp32

    def summary(self) -> dict:
        return {
            "method": "onnxruntime dynamic int8, per-channel weights; outlier input channels in fp32",
            "outlier_ratio": self.settings.outlier_ratio,
            "max_outliers": self.settings.max_outliers,
            "calibration_prompts": self.calibration_prompts,
            "inputs_split": len(self.outlier_channels),
            "outlier_channels": sum(len(v) for v in self.outlier_channels.values()),
        }


def weight_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """MatMul nodes whose second input is a 2-D initializer, grouped by their activation input."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            groups[node.input[0]].append(node)
    return dict(groups)


def activation_maxima(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the named tensors over the unpadded tokens of the calibration feeds."""
    from router_model.onnx_session import make_session

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), threads=2)
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        mask = np.asarray(feed["attention_mask"]).astype(bool) if "attention_mask" in feed else None
        for name, out in zip(names, session.run(list(names), dict(feed))):
            x = out[mask] if mask is not None and out.shape[:2] == mask.shape else out.reshape(-1, out.shape[-1])
            m = np.abs(x).max(axis=0)
            amax[name] = m if name not in amax else np.maximum(amax[name], m)
    return amax


def find_outliers(amax: np.ndarray, settings: QuantizationSettings = QuantizationSettings()) -> np.ndarray:
    """Sorted indices of the outlier channels (at most `max_outliers`, largest first kept)."""
    amax = np.asarray(amax, dtype=np.float64)
    if amax.ndim != 1 or amax.size < 10:
        return np.zeros(0, dtype=np.int64)
    bar = settings.outlier_ratio * float(np.quantile(amax, 0.9))
    top = np.argsort(-amax, kind="stable")[: settings.max_outliers]
    return np.sort(top[amax[top] > bar]).astype(np.int64)


def split_outlier_channels(model: onnx.ModelProto, outliers: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite each MatMul on an input with outliers into an int8-able part plus an fp32 side product.

    Returns the new model (numerically equal in fp32) and the names of the nodes of the fp32 side
    path, which the quantiser must leave alone.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    groups = weight_matmuls(model)
    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    fp32_nodes: list[str] = []
    for k, (x, idx) in enumerate(sorted(outliers.items())):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0 or x not in groups:
            continue
        stem = f"outlier_split_{k}"
        width = numpy_helper.to_array(inits[groups[x][0].input[1]]).shape[0]
        keep = np.ones(width, dtype=np.float32)
        keep[idx] = 0.0
        model.graph.initializer.extend(
            [numpy_helper.from_array(keep, f"{stem}_keep"), numpy_helper.from_array(idx, f"{stem}_channels")]
        )
        x_in, x_out = f"{stem}_inliers", f"{stem}_outliers"
        first = min(position[id(n)] for n in groups[x])
        before[first] += [
            helper.make_node("Mul", [x, f"{stem}_keep"], [x_in], name=f"{stem}_mask"),
            helper.make_node("Gather", [x, f"{stem}_channels"], [x_out], axis=-1, name=f"{stem}_gather"),
        ]
        for j, node in enumerate(groups[x]):
            w = numpy_helper.to_array(inits[node.input[1]])
            w_in = w.copy()
            w_in[idx] = 0.0  # rows of zeroed channels would only widen the int8 weight scales
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w_in.astype(np.float32), node.input[1]))
            w_name = f"{stem}_w{j}"
            model.graph.initializer.append(numpy_helper.from_array(w[idx].astype(np.float32), w_name))
            out = node.output[0]
            node.input[0] = x_in
            node.output[0] = f"{stem}_{j}_int8_part"
            side = helper.make_node("MatMul", [x_out, w_name], [f"{stem}_{j}_fp32_part"], name=f"{stem}_{j}_fp32_matmul")
            add = helper.make_node("Add", [node.output[0], side.output[0]], [out], name=f"{stem}_{j}_add")
            after[position[id(node)]] += [side, add]
            fp32_nodes.append(side.name)
        fp32_nodes.append(f"{stem}_gather")
    ordered: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        ordered += before.get(i, []) + [node] + after.get(i, [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return model, fp32_nodes


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime advises quant_pre_process on every call; its fusions are left out on purpose
    (the graph must stay comparable node for node with the fp32 one), so the advice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


def quantize_embedder(
    embedder_path: Path,
    calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    settings: QuantizationSettings = QuantizationSettings(),
) -> QuantizedEmbedder:
    """Dynamic int8 (per-channel weights) after splitting off outlier channels found on the feeds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(embedder_path))
    outliers: dict[str, np.ndarray] = {}
    if calibration_feeds and settings.max_outliers > 0:
        groups = weight_matmuls(model)
        amax = activation_maxima(model, calibration_feeds, list(groups))
        outliers = {x: idx for x, m in amax.items() if (idx := find_outliers(m, settings)).size}
    split, fp32_nodes = split_outlier_channels(model, outliers)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "split.onnx", Path(tmp) / "int8.onnx"
        onnx.save(split, str(src))
        advice = _NoPreprocessAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=fp32_nodes)
        finally:
            logging.getLogger().removeFilter(advice)
        quantized = onnx.load(str(out))
    return QuantizedEmbedder(
        quantized, settings, len(calibration_feeds), {x: [int(i) for i in idx] for x, idx in sorted(outliers.items())}
    )


def calibration_feeds(encoder, texts: Sequence[str], n: int = CALIBRATION_PROMPTS, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Model inputs for up to `n` of `texts` (a seeded sample), one unpadded prompt per feed."""
    if not texts:
        return []
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    return [encoder.encode_batch([texts[int(i)]])[0] for i in sorted(pick)]
