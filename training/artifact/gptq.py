"""GPTQ rounding of onnxruntime's int8 weights (Frantar et al., 2022).

Rounding each int8 weight to nearest ignores how the inputs use it. GPTQ rounds the rows of W one
input channel at a time and pushes each rounding error onto the rows not yet rounded, weighted by
the inputs' second moments H = E[x x^T] measured on calibration prompts, so the product x @ W_int8
stays close to x @ W. Scales stay onnxruntime's (per output channel); only the integers change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from training.artifact.int8_rewrites import token_rows, weight_matmuls

GPTQ_BLOCK = 64  # rows rounded between two matrix-product updates of the rest


class GPTQError(RuntimeError):
    """The quantised graph does not have the symmetric per-channel int8 weights GPTQ expects."""


def input_moments(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    """E[x x^T] of each named MatMul input over the unpadded tokens of the feeds."""
    sums = {name: np.zeros((0, 0)) for name in names}
    pending: dict[str, list[np.ndarray]] = {name: [] for name in names}
    tokens = rows = 0

    def flush() -> None:  # one large product per tensor instead of one per prompt: ~10x faster
        for name in names:
            if pending[name]:
                x = np.concatenate(pending[name]).astype(np.float64)
                sums[name] = x.T @ x if sums[name].size == 0 else sums[name] + x.T @ x
                pending[name] = []

    for out in token_rows(model, feeds, names):
        for name, x in out.items():
            pending[name].append(x)
        n = len(next(iter(out.values()))) if out else 0
        tokens, rows = tokens + n, rows + n
        if rows >= 4096:
            flush()
            rows = 0
    flush()
    return {name: s / max(tokens, 1) for name, s in sums.items()}


def gptq_round(w: np.ndarray, scale: np.ndarray, h: np.ndarray, *, damping: float = 0.01,
               block: int = GPTQ_BLOCK) -> np.ndarray:
    """Symmetric int8 for w (K x N, scale per column N) minimising ||x (w - q * scale)|| under E[x x^T] = h.

    Rows are rounded one at a time in blocks of `block`: inside a block each rounding error updates the
    block's later rows at once; the rows after the block get the block's errors in one matrix product
    (the "lazy batch" update of the GPTQ paper: the same arithmetic, reordered, ~10x faster than one
    outer product per row).
    """
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    dead = np.diag(h) == 0  # channels never active (e.g. zeroed outliers): their rows do not matter
    h[dead, dead] = 1.0
    w[dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable")  # most active channels first
    w, h = w[order], h[order][:, order]
    h += damping * float(np.mean(np.diag(h))) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, dtype=np.int8)
    k = len(w)
    for start in range(0, k, block):
        end = min(start + block, k)
        errors = np.empty((end - start, w.shape[1]))
        for i in range(start, end):
            qi = np.clip(np.round(w[i] / scale), -127, 127)
            q[i] = qi
            errors[i - start] = (w[i] - qi * scale) / u[i, i]
            w[i + 1:end] -= np.outer(u[i, i + 1:end], errors[i - start])
        w[end:] -= u[start:end, end:].T @ errors
    out = np.empty_like(q)
    out[order] = q
    return out


def gptq_requantize(fp32_model: onnx.ModelProto, q_model: onnx.ModelProto, feeds, *, damping: float = 0.01) -> onnx.ModelProto:
    """`q_model` (quantize_dynamic of `fp32_model`) with its int8 MatMul weights re-rounded by GPTQ."""
    q_model = onnx.ModelProto.FromString(q_model.SerializeToString())
    weights = {i.name: i for i in fp32_model.graph.initializer}
    qinit = {i.name: i for i in q_model.graph.initializer}
    # onnxruntime names a quantised weight W as W_quantized, W_scale, W_zero_point
    groups = {x: [n for n in ns if n.input[1] + "_quantized" in qinit] for x, ns in weight_matmuls(fp32_model).items()}
    groups = {x: ns for x, ns in groups.items() if ns}
    if not groups:
        raise GPTQError("no quantised MatMul weights found (expected onnxruntime's <weight>_quantized initializers)")
    moments = input_moments(fp32_model, feeds, list(groups))
    for x, nodes in groups.items():
        for node in nodes:
            name = node.input[1]
            q = numpy_helper.to_array(qinit[name + "_quantized"])
            scale = numpy_helper.to_array(qinit[name + "_scale"]).astype(np.float64)
            zero = numpy_helper.to_array(qinit[name + "_zero_point"])
            if q.dtype != np.int8 or np.any(zero != 0) or scale.shape != (q.shape[1],):
                raise GPTQError(f"{name}: expected symmetric int8 weights with one scale per column, got "
                                f"{q.dtype} with scales of shape {scale.shape}")
            w = numpy_helper.to_array(weights[name])
            requantized = gptq_round(w, scale, moments[x], damping=damping)
            qinit[name + "_quantized"].CopyFrom(numpy_helper.from_array(requantized, name + "_quantized"))
    return q_model
