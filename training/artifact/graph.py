"""Join the embedder graph and the calibrated head into one ONNX graph, fp32 and int8.

token ids -> embedder -> [embedding | request features] -> calibrated head -> probabilities.
The int8 graph quantises only the embedder (training/quantize.py); the head stays fp32 so its
calibration is untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from router_model.artifact import FEATURES_INPUT, PROBABILITIES_OUTPUT
from training.embedding.common import EMBEDDING_OUTPUT, OPSET

HEAD_INPUT = "head_input"
ML_OPSET = 3


def head_to_onnx(model, n_inputs: int) -> onnx.ModelProto:
    """Convert a fitted sklearn classifier to ONNX with a plain probability tensor (no zipmap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[(HEAD_INPUT, FloatTensorType([None, n_inputs]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    names = [o.name for o in onx.graph.output]
    if PROBABILITIES_OUTPUT not in names:
        raise RuntimeError(f"skl2onnx produced outputs {names}, expected {PROBABILITIES_OUTPUT!r}")
    return onx


def _concat_model(dim: int, n_features: int, ir_version: int) -> onnx.ModelProto:
    emb = helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim])
    feats = helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", n_features])
    out = helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim + n_features])
    node = helper.make_node("Concat", [EMBEDDING_OUTPUT, FEATURES_INPUT], [HEAD_INPUT], axis=1)
    graph = helper.make_graph([node], "concat_features", [emb, feats], [out])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = ir_version
    return m


def _identity_model(dim: int, ir_version: int) -> onnx.ModelProto:
    emb = helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim])
    out = helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph([helper.make_node("Identity", [EMBEDDING_OUTPUT], [HEAD_INPUT])], "no_features", [emb], [out])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = ir_version
    return m


def merge_router_graph(embedder: onnx.ModelProto, head: onnx.ModelProto, dim: int, *, n_features: int,
                       output: str = PROBABILITIES_OUTPUT) -> onnx.ModelProto:
    """One graph from the embedder's inputs (+ features) to the head's `output` (default `probabilities`;
    an N-model head's is `pass_probabilities`) and the embedding."""
    from onnx import compose

    ir = max(embedder.ir_version, head.ir_version)
    embedder = onnx.ModelProto.FromString(embedder.SerializeToString())
    head = onnx.ModelProto.FromString(head.SerializeToString())
    # Keep only the opset imports the embedder uses (quantisation can leave stray ones that
    # merge_models would reject as conflicting).
    used = {n.domain for n in embedder.graph.node}
    keep = [o for o in embedder.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del embedder.opset_import[:]
    embedder.opset_import.extend(keep)
    embedder.ir_version = ir
    head.ir_version = ir
    joiner = _concat_model(dim, n_features, ir) if n_features else _identity_model(dim, ir)
    first = compose.merge_models(embedder, joiner, io_map=[(EMBEDDING_OUTPUT, EMBEDDING_OUTPUT)])
    merged = compose.merge_models(first, head, io_map=[(HEAD_INPUT, HEAD_INPUT)], outputs=[output])
    # The embedding as a second output: the router's drift distance reads it from the same run.
    merged.graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim]))
    onnx.checker.check_model(merged)
    return merged


def head_parity(model, onx: onnx.ModelProto, X: np.ndarray) -> float:
    """Max abs difference between sklearn's and the converted head's probabilities."""
    from router_model.onnx_session import make_session

    sess = make_session(onx.SerializeToString(), threads=1)
    got = sess.run([PROBABILITIES_OUTPUT], {HEAD_INPUT: X.astype(np.float32)})[0]
    return float(np.abs(got - model.predict_proba(X)).max())
