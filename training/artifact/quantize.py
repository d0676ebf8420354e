"""The int8 embedder: onnxruntime dynamic int8, after rewrites that make it faithful to fp32.

Plain dynamic int8 (one activation scale per tensor, per-channel int8 weights, each embedding table
one uint8 scale) flips ~3% of the public router's decisions near its threshold. The recipe here,
each step measured by benchmarks/quantization.py on the public router's held-out prompts:

1. MatMuls fed by a LayerNorm read its normalised rows, the gain and shift folded into the weights;
2. outlier input channels (found on calibration prompts) are split off and computed in fp32;
3. every int8 input is scaled per token (training/int8_rewrites.py has the exact rewrites);
4. onnxruntime quantises the MatMuls (per-channel symmetric int8 weights);
5. the int8 weights are re-rounded with GPTQ on the calibration prompts (training/gptq.py);
6. the token embedding table is stored as int8 with one scale per row;
7. the per-token-scaled inputs (in [-1, 1]) get a fixed activation scale instead of onnxruntime's
   per-batch one, so a prompt's result does not depend on its batch companions.

Calibration prompts come from the training split only. Every step is exact in fp32 except 4-6.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from training.artifact.gptq import gptq_requantize
from training.artifact.int8_rewrites import (
    normalise_layernorm_inputs,
    row_scaled_tables,
    scale_per_token,
    split_outlier_channels,
    static_unit_activations,
    token_rows,
    weight_matmuls,
)

# A channel is an outlier when its calibration max |x| exceeds OUTLIER_RATIO times the 90th percentile
# of the input's channel maxima (MiniLM: the feed-forward inputs carry channels 5-10x the rest).
OUTLIER_RATIO = 3.0
MAX_OUTLIERS = 8  # per input tensor: the fp32 side product stays tiny
GPTQ_DAMPING = 0.01  # fraction of the mean diagonal added to E[x x^T] before inverting it
CALIBRATION_PROMPTS = 256


@dataclass(frozen=True)
class QuantizationSettings:
    """How the int8 graph is made; recorded in metadata.json. The defaults are the shipped recipe."""

    outlier_ratio: float = OUTLIER_RATIO
    max_outliers: int = MAX_OUTLIERS
    per_token_scaling: bool = True  # steps 1 and 3 (each alone makes the int8 graph worse)
    static_activations: bool = True  # step 7 (needs per_token_scaling): batch-invariant int8
    gptq_damping: float | None = GPTQ_DAMPING  # None: round weights to nearest

    def __post_init__(self) -> None:
        if not self.outlier_ratio > 1.0:
            raise ValueError(f"outlier_ratio must be > 1, got {self.outlier_ratio}")
        if self.max_outliers < 0:
            raise ValueError(f"max_outliers must be >= 0, got {self.max_outliers}")
        if self.gptq_damping is not None and not self.gptq_damping > 0:
            raise ValueError(f"gptq_damping must be > 0 (or None for round to nearest), got {self.gptq_damping}")


@dataclass(frozen=True)
class QuantizedEmbedder:
    model: onnx.ModelProto
    settings: QuantizationSettings
    calibration_prompts: int
    outlier_channels: dict[str, list[int]]  # MatMul input tensor -> channels computed in fp32

    def summary(self) -> dict:
        calibrated = self.calibration_prompts > 0
        return {
            "method": "onnxruntime dynamic int8 (per-channel weights) after exact rewrites; see training/quantize.py",
            "outlier_ratio": self.settings.outlier_ratio,
            "max_outliers": self.settings.max_outliers,
            "per_token_scaling": self.settings.per_token_scaling,
            "weight_rounding": "gptq" if calibrated and self.settings.gptq_damping is not None else "nearest",
            "gptq_damping": self.settings.gptq_damping if calibrated else None,
            "token_embeddings": "int8, one scale per row",
            "activation_scales": "static 1/127 on per-token-scaled inputs (batch-invariant)"
            if self.settings.per_token_scaling and self.settings.static_activations else "dynamic, one per tensor",
            "calibration_prompts": self.calibration_prompts,
            "inputs_split": len(self.outlier_channels),
            "outlier_channels": sum(len(v) for v in self.outlier_channels.values()),
        }


def activation_maxima(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the named tensors over the unpadded tokens of the calibration feeds."""
    amax: dict[str, np.ndarray] = {}
    for rows in token_rows(model, feeds, names):
        for name, x in rows.items():
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
    """The int8 embedder (module docstring). Without calibration feeds: no outlier split, no GPTQ."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(embedder_path))
    if settings.per_token_scaling:
        model = normalise_layernorm_inputs(model)
    outliers: dict[str, np.ndarray] = {}
    if calibration_feeds and settings.max_outliers > 0:
        groups = weight_matmuls(model)
        amax = activation_maxima(model, calibration_feeds, list(groups))
        outliers = {x: idx for x, m in amax.items() if (idx := find_outliers(m, settings)).size}
    model, fp32_nodes = split_outlier_channels(model, outliers)
    if settings.per_token_scaling:
        model = scale_per_token(model, skip_nodes=fp32_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        advice = _NoPreprocessAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=fp32_nodes)
        finally:
            logging.getLogger().removeFilter(advice)
        quantized = onnx.load(str(out))
    if calibration_feeds and settings.gptq_damping is not None:
        quantized = gptq_requantize(model, quantized, calibration_feeds, damping=settings.gptq_damping)
    if settings.per_token_scaling and settings.static_activations:
        quantized = static_unit_activations(quantized)
    return QuantizedEmbedder(
        row_scaled_tables(quantized), settings, len(calibration_feeds),
        {x: [int(i) for i in idx] for x, idx in sorted(outliers.items())},
    )


def calibration_feeds(encoder, texts: Sequence[str], n: int = CALIBRATION_PROMPTS, *,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Model inputs for up to `n` of `texts` (a seeded sample), one unpadded prompt per feed."""
    if not texts:
        return []
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    return [encoder.encode_batch([texts[int(i)]])[0] for i in sorted(pick)]
