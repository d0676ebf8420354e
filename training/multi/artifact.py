"""The N-model artifact: every head in the same ONNX graph as the embedder, fp32 and int8.

token ids -> embedder -> [embedding | request features] -> one MatMul over every head's linear
folds -> sigmoid calibration -> fold means -> `pass_probabilities` (batch, 2N): P(pass) of each
model, then P(ok) of each. One graph run per request, whatever N is. The directory is staged,
loaded back through the inference package and held to the sklearn-equivalent heads (fp32) and
to fp32 (int8) before anything may publish it (training/artifact/writer.py `publish`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from router_model.artifact import (
    FP32,
    INT8,
    MULTI_FORMAT_VERSION,
    ArtifactMetadata,
    DataRecord,
    GoalRecord,
    MultiModelRecord,
    ParityRecord,
)
from router_model.errors import ArtifactError
from router_model.multi import PASS_OUTPUT, CostModel, choose
from router_model.offline.log import LogReadResult
from router_model.offline.multi_evaluation import finite
from router_model.prompt_digest import PromptDigest
from router_model.request import Request
from training.artifact.graph import HEAD_INPUT
from training.artifact.writer import (
    FP32_MAX_DIFF,
    INT8_MIN_AGREEMENT,
    HeadGraph,
    ParityCheck,
    StagedArtifact,
    Stamp,
    stage_artifact,
)
from training.embedding.common import OPSET
from training.embedding.onnx_embedder import ExportedEmbedder
from training.multi.heads import PassHeads
from training.multi.rule import RuleChoice
from training.risk import certificate_of

INT8_MAX_QUALITY_DIFF = 0.005


def heads_to_onnx(heads: PassHeads, n_inputs: int) -> onnx.ModelProto:
    """All heads as one graph: head_input (batch, D) -> pass_probabilities (batch, 2N)."""
    hs = heads.heads()
    W = np.vstack([h.w for h in hs]).T.astype(np.float32)  # (D, F)
    if W.shape[0] != n_inputs:
        raise ValueError(f"heads take {W.shape[0]} inputs, the graph feeds {n_inputs}")
    c = np.concatenate([h.c for h in hs]).astype(np.float32)
    a = np.concatenate([h.a for h in hs]).astype(np.float32)
    b = np.concatenate([h.b for h in hs]).astype(np.float32)
    avg = np.zeros((W.shape[1], len(hs)), dtype=np.float32)
    k = 0
    for j, h in enumerate(hs):
        n = len(h.c)
        avg[k:k + n, j] = 1.0 / n
        k += n
    inits = [numpy_helper.from_array(v, name) for v, name in ((W, "mh_w"), (c, "mh_c"), (a, "mh_a"), (b, "mh_b"), (avg, "mh_avg"))]
    nodes = [
        helper.make_node("MatMul", [HEAD_INPUT, "mh_w"], ["mh_z"]),
        helper.make_node("Add", ["mh_z", "mh_c"], ["mh_z1"]),
        helper.make_node("Mul", ["mh_z1", "mh_a"], ["mh_z2"]),
        helper.make_node("Add", ["mh_z2", "mh_b"], ["mh_t"]),
        helper.make_node("Neg", ["mh_t"], ["mh_nt"]),
        helper.make_node("Sigmoid", ["mh_nt"], ["mh_s"]),
        helper.make_node("MatMul", ["mh_s", "mh_avg"], [PASS_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "multi_model_heads",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", n_inputs])],
        [helper.make_tensor_value_info(PASS_OUTPUT, TensorProto.FLOAT, ["batch", len(hs)])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(m)
    return m


def head_parity(heads: PassHeads, onx: onnx.ModelProto, X: np.ndarray) -> float:
    """Max abs difference between the heads in numpy (float64) and in the ONNX graph."""
    from router_model.onnx_session import make_session

    sess = make_session(onx.SerializeToString(), threads=1)
    got = sess.run([PASS_OUTPUT], {HEAD_INPUT: X.astype(np.float32)})[0]
    want = np.hstack([heads.p_pass(X), heads.p_ok(X)])
    return float(np.abs(got - want).max())


@dataclass(frozen=True)
class MultiRecord:
    """What metadata.json records of an N-model run, beside the graphs."""

    read: LogReadResult
    heads: PassHeads
    choice: RuleChoice
    cost_models: tuple[CostModel, ...]
    cost_source: dict[str, str]
    evaluation: dict
    split_rows: dict[str, int]
    logs: tuple[Path, ...]
    features: tuple[str, ...]
    pass_threshold: float
    trained_prompts: PromptDigest
    prices: dict = field(default_factory=dict)  # what priced the models: router_model.cost.PriceTable.provenance


def goal_record(choice: RuleChoice) -> GoalRecord:
    """metadata.json's goal for an N-model policy: the floor is relative to the reference model."""
    g = choice.goal
    floor = None
    if g.risk is not None and g.kind == "quality_floor":
        floor = float(g.value) if choice.certified else 1.0
    return GoalRecord(g.kind, float(g.value), bool(choice.met), risk=g.risk, method=choice.method,
                      certified=choice.certified, certified_floor=floor, bound=choice.bound,
                      n_labelled=choice.n_labelled or None, n_needed=choice.n_needed,
                      certificate=certificate_of(choice.method) or "none")


def build_metadata(rec: MultiRecord, exported: ExportedEmbedder, stamp: Stamp) -> ArtifactMetadata:
    models = rec.heads.models
    choice = rec.choice
    read = rec.read
    return ArtifactMetadata(
        **stamp.fields(),
        cheap_model=models[0],
        strong_model=choice.val_best_single,  # what rules (image, tags, long context) route to
        threshold=float(np.clip(choice.value, 0.0, 1.0)) if choice.kind.startswith("cheapest") else 0.0,
        goal=goal_record(choice),
        target="multi",
        classes=tuple(f"pass:{m}" for m in models) + tuple(f"ok:{m}" for m in models),
        cheap_ok_classes=(f"ok:{models[0]}",),
        head="logreg_per_model",
        calibration="sigmoid",
        embedder=exported.spec,
        features=rec.features,
        metrics=finite({
            "multi_test": rec.evaluation,
            "validation_heads": rec.heads.validation,
            "policy": {"kind": choice.kind, "value": choice.value if np.isfinite(choice.value) else "inf",
                       "why": choice.why, "families": choice.families, "val_quality": choice.val_quality,
                       "val_cost_per_request": choice.val_cost_per_request},
        }),
        data=DataRecord(
            files=tuple(str(p) for p in rec.logs), sha256=read.data_sha256, rows_read=read.rows_read,
            rows_used=read.rows_used, skipped=dict(read.skipped), split_rows=rec.split_rows,
            pass_threshold=rec.pass_threshold, trained_prompts=rec.trained_prompts,
        ),
        multi=MultiModelRecord(models=models, rule=choice.kind, value=float(choice.value), cost_models=rec.cost_models,
                               best_single=choice.val_best_single, cost_source=rec.cost_source),
        prices=rec.prices,
        format_version=MULTI_FORMAT_VERSION,
    )


@dataclass(frozen=True)
class MultiHeldOut:
    """The test split as the parity check needs it."""

    requests: list[Request]
    X: np.ndarray
    passed: np.ndarray
    n_tokens: np.ndarray


def check_parity(model_dir: Path, meta: ArtifactMetadata, *, heads: PassHeads, held: MultiHeldOut,
                 head_vs_numpy: float) -> ParityCheck:
    """fp32 graph vs the numpy heads; int8 vs fp32 on the decisions the served rule makes."""
    from router_model.router import Router

    assert meta.multi is not None
    want_pass, want_ok = heads.p_pass(held.X), heads.p_ok(held.X)
    r32 = Router.load(model_dir, graph=FP32)
    p32, o32 = r32.model_probabilities(held.requests)
    diff = float(max(np.abs(p32 - want_pass).max(), np.abs(o32 - want_ok).max()))
    if diff > FP32_MAX_DIFF:
        raise ArtifactError(f"the exported fp32 graph differs from the heads by {diff:.2e}")
    p8, o8 = Router.load(model_dir, graph=INT8).model_probabilities(held.requests)
    est = np.column_stack([c.estimate(held.n_tokens) for c in meta.multi.cost_models])
    d32 = choose(meta.multi.rule, meta.multi.value, p32, o32, est)
    d8 = choose(meta.multi.rule, meta.multi.value, p8, o8, est)
    agreement = float(np.mean(d32 == d8)) if len(d32) else 1.0
    rows = np.arange(len(d32))
    y = np.nan_to_num(held.passed, nan=0.0)
    q_diff = float(abs(y[rows, d8].mean() - y[rows, d32].mean())) if len(d32) else 0.0
    parity = ParityRecord(
        head_onnx_vs_sklearn_max_abs=head_vs_numpy,
        fp32_graph_vs_sklearn_max_abs=diff,
        int8_decision_agreement=agreement,
        int8_apgr_abs_diff=q_diff,  # for N models: the held-out quality difference of the served rule
        int8_max_abs_diff=float(max(np.abs(p8 - p32).max(), np.abs(o8 - o32).max())),
        n=len(held.requests),
    )
    return ParityCheck(agreement >= INT8_MIN_AGREEMENT and q_diff <= INT8_MAX_QUALITY_DIFF, {"parity": parity})


def stage_multi_dir(out_dir: Path, rec: MultiRecord, exported: ExportedEmbedder, *, X_val: np.ndarray,
                    train_texts: Sequence[str], held: MultiHeldOut, seed: int, default_graph: str = "auto") -> StagedArtifact:
    """The N-model directory, staged and verified beside `out_dir` (training/artifact/writer.py `stage_artifact`)."""
    n_features = len(rec.features)
    onx = heads_to_onnx(rec.heads, exported.spec.dim + n_features)
    head = HeadGraph(onx, head_parity(rec.heads, onx, X_val), "the numpy heads", n_features=n_features, output=PASS_OUTPUT)
    return stage_artifact(
        out_dir,
        head=head,
        exported=exported,
        calibration_texts=train_texts,
        metadata=lambda stamp: build_metadata(rec, exported, stamp),
        check_parity=lambda model_dir, meta: check_parity(model_dir, meta, heads=rec.heads, held=held,
                                                          head_vs_numpy=head.vs_reference),
        default_graph=default_graph,
        seed=seed,
    )
