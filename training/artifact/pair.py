"""The pair router's part of its model directory: the sklearn head as ONNX, its metadata, its parity check.

Everything else (graphs, staging, publishing) is the writer's, shared with the other kinds
(training/artifact/writer.py `stage_artifact`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router_model.artifact import (
    FP32,
    INT8,
    ArtifactMetadata,
    DataRecord,
    GoalRecord,
    ParityRecord,
)
from router_model.drift_reference import DriftReference, write_reference
from router_model.errors import ArtifactError
from router_model.offline import metrics as M
from router_model.offline.log import LogReadResult
from router_model.prompt_digest import PromptDigest
from router_model.request import Request
from training.artifact.graph import head_parity, head_to_onnx
from training.artifact.writer import (
    FP32_MAX_DIFF,
    FP32_PARITY_ROWS,
    INT8_MAX_APGR_DIFF,
    INT8_MIN_AGREEMENT,
    HeadGraph,
    ParityCheck,
    StagedArtifact,
    Stamp,
    stage_artifact,
)
from training.embedding.onnx_embedder import ExportedEmbedder
from training.escalation import EscalationStage
from training.escalation_export import answer_score_graph, write_answer_score
from training.head import FittedHead
from training.threshold import Goal, ThresholdChoice, goal_record_fields


@dataclass(frozen=True)
class TrainingRecord:
    """What metadata.json records of the run, beside the graphs."""

    read: LogReadResult
    head: FittedHead
    choice: ThresholdChoice
    goal: Goal
    evaluation: dict
    split_rows: dict[str, int]
    logs: tuple[Path, ...]
    features: tuple[str, ...]
    calibration: str
    pass_threshold: float
    price_as: dict[str, str]
    trained_prompts: PromptDigest
    drift_reference: DriftReference | None = None  # written as drift_reference.json (router_model/observe/drift.py)
    prices: dict = field(default_factory=dict)  # what priced the pair: router_model.cost.PriceTable.provenance
    escalation: EscalationStage | None = None  # the answer score and its certified use (training/escalation.py)


@dataclass(frozen=True)
class HeldOut:
    """The test split as the parity check needs it: requests, the sklearn inputs and the outcomes."""

    requests: list[Request]
    X: np.ndarray
    cheap_passed: np.ndarray
    strong_passed: np.ndarray


def pair_head(head: FittedHead, n_inputs: int, X_val: np.ndarray, *, n_features: int) -> HeadGraph:
    """The fitted sklearn head in ONNX, compared with sklearn on the validation rows."""
    onx = head_to_onnx(head.model, n_inputs)
    return HeadGraph(onx, head_parity(head.model, onx, X_val), "sklearn", n_features=n_features)


def build_metadata(record: TrainingRecord, exported: ExportedEmbedder, stamp: Stamp) -> ArtifactMetadata:
    target = record.head.target
    classes = tuple(target.classes[int(c)] for c in record.head.model.classes_)
    read = record.read
    return ArtifactMetadata(
        **stamp.fields(),
        cheap_model=read.cheap_model,
        strong_model=read.strong_model,
        threshold=float(record.choice.threshold),
        goal=GoalRecord(**goal_record_fields(record.choice)),
        target=target.name,
        classes=classes,
        cheap_ok_classes=tuple(c for c in classes if c in target.cheap_ok_classes),
        head=record.head.name,
        calibration=record.calibration,
        embedder=exported.spec,
        features=record.features,
        metrics={"test": record.evaluation, "validation_heads": record.head.validation},
        data=DataRecord(
            files=tuple(str(p) for p in record.logs),
            sha256=read.data_sha256,
            rows_read=read.rows_read,
            rows_used=read.rows_used,
            skipped=dict(read.skipped),
            split_rows=record.split_rows,
            pass_threshold=record.pass_threshold,
            trained_prompts=record.trained_prompts,
        ),
        price_as=record.price_as,
        prices=record.prices,
        escalation=record.escalation.record if record.escalation is not None else None,
    )


def check_parity(model_dir: Path, meta: ArtifactMetadata, *, head: FittedHead, held_out: HeldOut,
                 head_vs_sklearn: float) -> ParityCheck:
    """Load the staged directory through the inference package; hold fp32 to sklearn, int8 to fp32.

    The fp32 graph is checked on an even spread of FP32_PARITY_ROWS test rows (it is the same
    computation as sklearn's, so a difference shows on any row) and the int8 graph on all of them
    against the sklearn probabilities, which equal fp32's to within that check. Both runs use every
    core: this is offline work, and it was half of a quickstart's training time.
    """
    from router_model.router import Router

    threads = max(1, os.cpu_count() or 1)
    p_sklearn = head.p_cheap_ok(held_out.X)
    n = len(held_out.requests)
    some = np.unique(np.linspace(0, n - 1, min(n, FP32_PARITY_ROWS)).astype(int)) if n else np.zeros(0, dtype=int)
    p32 = Router.load(model_dir, graph=FP32, threads=threads).p_cheap_ok([held_out.requests[i] for i in some])
    fp32_diff = float(np.abs(p32 - p_sklearn[some]).max()) if len(some) else 0.0
    if fp32_diff > FP32_MAX_DIFF:
        raise ArtifactError(f"the exported fp32 graph differs from the sklearn pipeline by {fp32_diff:.2e}")
    p8 = Router.load(model_dir, graph=INT8, threads=threads).p_cheap_ok(held_out.requests)
    t = meta.threshold
    agreement = float(np.mean((p8 >= t) == (p_sklearn >= t)))
    outcomes = held_out.cheap_passed, held_out.strong_passed
    apgr_diff = abs(M.apgr(1 - p8, *outcomes) - M.apgr(1 - p_sklearn, *outcomes))
    parity = ParityRecord(
        head_onnx_vs_sklearn_max_abs=head_vs_sklearn,
        fp32_graph_vs_sklearn_max_abs=fp32_diff,
        int8_decision_agreement=agreement,
        int8_apgr_abs_diff=apgr_diff,
        int8_max_abs_diff=float(np.abs(p8 - p_sklearn).max()),
        n=len(held_out.requests),
    )
    return ParityCheck(agreement >= INT8_MIN_AGREEMENT and apgr_diff <= INT8_MAX_APGR_DIFF, {"parity": parity})


def stage_model_dir(
    out_dir: Path,
    record: TrainingRecord,
    exported: ExportedEmbedder,
    *,
    X_val: np.ndarray,
    train_texts: Sequence[str],
    held_out: HeldOut,
    seed: int,
    default_graph: str = "auto",
) -> StagedArtifact:
    """The pair router's directory, staged and verified beside `out_dir` (writer.py `stage_artifact`)."""
    n_features = len(record.features)
    head = pair_head(record.head, exported.spec.dim + n_features, X_val, n_features=n_features)

    def extra_files(model_dir: Path) -> None:
        if record.drift_reference is not None:
            write_reference(model_dir, record.drift_reference)
        esc = record.escalation
        if esc is not None and esc.record.on:
            assert esc.head is not None and esc.fit_features is not None
            h = esc.head
            graph = answer_score_graph(mean=h.mean, scale=h.scale, coef=h.coef, intercept=h.intercept)
            write_answer_score(model_dir / esc.record.graph, graph, features=esc.fit_features,
                               expected=h.predict(esc.fit_features))

    return stage_artifact(
        out_dir,
        head=head,
        exported=exported,
        calibration_texts=train_texts,
        metadata=lambda stamp: build_metadata(record, exported, stamp),
        check_parity=lambda model_dir, meta: check_parity(model_dir, meta, head=record.head, held_out=held_out,
                                                          head_vs_sklearn=head.vs_reference),
        default_graph=default_graph,
        extra_files=extra_files,
        seed=seed,
    )
