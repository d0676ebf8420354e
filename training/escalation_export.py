"""The answer-score head as one small ONNX graph (standardise, logistic), checked against sklearn.

Written next to the router's graphs; read by router_model/answer_score.py. The graph is built by
hand from the fitted numbers (five nodes), so it needs no converter and its parity with the
sklearn pipeline is checked on the rows it was fitted on before it is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from router_model.answer_score import SCORE_INPUT, SCORE_OUTPUT
from router_model.errors import ArtifactError
from router_model.onnx_session import make_session

OPSET = 17
# The IR version the router's own graphs carry (the exported embedder's): onnx would stamp its newest
# (14 with onnx 1.23), which onnxruntime before 1.20 refuses, and router-model runs on >= 1.18.
IR_VERSION = 8
PARITY_TOLERANCE = 1e-5


def answer_score_graph(*, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> bytes:
    """sigmoid(((x - mean) / scale) . coef + intercept) for a (batch, k) float input -> (batch,)."""
    k = len(coef)
    if not (len(mean) == len(scale) == k):
        raise ValueError(f"mean, scale and coef must have one value per feature ({k})")
    weights = (np.asarray(coef, dtype=np.float64) / np.asarray(scale, dtype=np.float64)).astype(np.float32)
    bias = np.float32(intercept - float(np.dot(np.asarray(mean, dtype=np.float64), weights.astype(np.float64))))
    inits = [
        numpy_helper.from_array(weights.reshape(k, 1), "w"),
        numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("MatMul", [SCORE_INPUT, "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], [SCORE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "answer_score",
        [helper.make_tensor_value_info(SCORE_INPUT, TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="router-model")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_answer_score(path: Path, graph: bytes, *, features: np.ndarray, expected: np.ndarray) -> float:
    """Write the graph after checking it reproduces `expected` on `features`; return the largest gap."""
    session = make_session(graph)
    got = np.asarray(session.run([SCORE_OUTPUT], {SCORE_INPUT: features.astype(np.float32)})[0], dtype=float)
    gap = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    if gap > PARITY_TOLERANCE:
        raise ArtifactError(f"answer-score graph differs from the fitted head by {gap:.2e}", file=path.name)
    path.write_bytes(graph)
    return gap
