"""Write, verify and publish the model directory the inference package loads.

Three steps, each with typed inputs and outputs:

1. `stage_model_dir` builds the directory beside the target (`.NAME.tmp-*`): fp32 and int8 graphs,
   tokenizer, metadata.json (an `ArtifactMetadata`), then loads it back through the inference
   package and holds it to the sklearn pipeline (`check_parity`), which also picks the default graph;
2. the pipeline does whatever else can fail (plots, tracking) against the staged directory;
3. `publish` moves it into place, last. So a failed run never replaces a good model, and a
   service watching the directory only ever sees finished, verified artifacts.

A directory at the target that is not a router artifact is never replaced (nor deleted): the
run is refused, naming it. Temporaries of runs that died (a signal, a power cut) are removed on
the next run to the same target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

from router_model.artifact import (
    FP32,
    GRAPH_FILES,
    INT8,
    METADATA_FILE,
    TOKENIZER_FILE,
    ArtifactMetadata,
    DataRecord,
    GoalRecord,
    ParityRecord,
    write_metadata,
)
from router_model.errors import ArtifactError
from router_model.observe.drift import DriftReference, write_reference
from router_model.offline import metrics as M
from router_model.offline.log import LogReadResult
from router_model.prompt_digest import PromptDigest
from router_model.request import Request
from training.artifact.graph import head_parity, head_to_onnx, merge_router_graph
from training.artifact.quantize import QuantizedEmbedder, calibration_feeds, quantize_embedder
from training.data.dataset import Dataset
from training.embedding.onnx_embedder import ExportedEmbedder
from training.embedding.static import is_static
from training.head import FittedHead
from training.threshold import Goal, ThresholdChoice, goal_record_fields

# int8 is served by default when, on the held-out split, at least 99% of its decisions agree with
# fp32 and its APGR is within 0.005. The int8 graph (training/artifact/quantize.py) agrees on ~99.3%
# of the public router's held-out decisions; the flips are prompts within ~0.005 of the threshold.
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_APGR_DIFF = 0.005
FP32_MAX_DIFF = 1e-4
FP32_PARITY_ROWS = 512  # test rows the fp32 graph is checked on (int8: all of them)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("router-model", "onnx", "onnxruntime", "tokenizers", "numpy", "scikit-learn", "skl2onnx",
                "sentence-transformers", "transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg.replace("-", "_")] = version(pkg)
    return out


@dataclass(frozen=True)
class RouterGraphs:
    """The head in ONNX (checked against sklearn) and the two merged router graphs."""

    head: onnx.ModelProto
    head_vs_sklearn: float
    fp32: onnx.ModelProto
    int8: onnx.ModelProto
    quantized: QuantizedEmbedder


def build_graphs(
    head: FittedHead, exported: ExportedEmbedder, n_features: int, X_val: np.ndarray, train_texts: list[str], *, seed: int
) -> RouterGraphs:
    """Convert the head, merge it with the fp32 and the int8 embedder (calibrated on training prompts only)."""
    n_inputs = exported.spec.dim + n_features
    head_onnx = head_to_onnx(head.model, n_inputs)
    diff = head_parity(head.model, head_onnx, X_val)
    if diff > FP32_MAX_DIFF:
        raise ArtifactError(f"the ONNX head differs from sklearn by {diff:.2e} (> {FP32_MAX_DIFF})")
    dim = exported.spec.dim
    fp32 = merge_router_graph(onnx.load(str(exported.onnx_path)), head_onnx, dim, n_features)
    # A static embedder has no MatMul to calibrate: its int8 graph is the row-scaled int8 table alone.
    feeds = [] if is_static(exported.spec.name) else calibration_feeds(exported.text_encoder(), train_texts, seed=seed)
    quantized = quantize_embedder(exported.onnx_path, feeds)
    int8 = merge_router_graph(quantized.model, head_onnx, dim, n_features)
    return RouterGraphs(head_onnx, diff, fp32, int8, quantized)


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


def build_metadata(record: TrainingRecord, exported: ExportedEmbedder, graphs: RouterGraphs, stamp: datetime) -> ArtifactMetadata:
    target = record.head.target
    classes = tuple(target.classes[int(c)] for c in record.head.model.classes_)
    read = record.read
    return ArtifactMetadata(
        artifact_version=f"{stamp:%Y%m%dT%H%M%SZ}-{hashlib.sha256(graphs.head.SerializeToString()).hexdigest()[:8]}",
        created_at=stamp.isoformat(),
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
        graphs=dict(GRAPH_FILES),
        default_graph=FP32,  # until check_parity has compared the int8 graph
        quantization=graphs.quantized.summary(),
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
        versions=_versions(),
        price_as=record.price_as,
    )


@dataclass(frozen=True)
class HeldOut:
    """The test split as the parity check needs it: requests, the sklearn inputs and the outcomes."""

    requests: list[Request]
    X: np.ndarray
    w: np.ndarray
    s: np.ndarray


def check_parity(model_dir: Path, meta: ArtifactMetadata, head: FittedHead, held_out: HeldOut, head_vs_sklearn: float,
                 default_graph: str = "auto") -> tuple[ParityRecord, str]:
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
    w, s = held_out.w, held_out.s
    apgr_diff = abs(M.apgr(1 - p8, w, s) - M.apgr(1 - p_sklearn, w, s))
    int8_ok = agreement >= INT8_MIN_AGREEMENT and apgr_diff <= INT8_MAX_APGR_DIFF
    chosen = default_graph if default_graph != "auto" else (INT8 if int8_ok else FP32)
    parity = ParityRecord(
        head_onnx_vs_sklearn_max_abs=head_vs_sklearn,
        fp32_graph_vs_sklearn_max_abs=fp32_diff,
        int8_decision_agreement=agreement,
        int8_apgr_abs_diff=apgr_diff,
        int8_max_abs_diff=float(np.abs(p8 - p_sklearn).max()),
        n=len(held_out.requests),
    )
    return parity, chosen


@dataclass(frozen=True)
class StagedArtifact:
    """A verified model directory beside its target, not yet published."""

    path: Path
    target: Path
    metadata: ArtifactMetadata


def stage_model_dir(
    out_dir: Path,
    record: TrainingRecord,
    exported: ExportedEmbedder,
    ds: Dataset,
    X: np.ndarray,
    held_out: HeldOut,
    *,
    seed: int,
    default_graph: str = "auto",
) -> StagedArtifact:
    """Build and verify the directory in a temporary beside `out_dir` (removed again on any failure)."""
    out_dir = Path(out_dir)
    stamp = datetime.now(UTC)
    tmp = new_staging_dir(out_dir, stamp)
    try:
        train_texts = [ds.texts[i] for i in ds.rows("train")]
        graphs = build_graphs(record.head, exported, len(record.features), X[ds.rows("val")], train_texts, seed=seed)
        onnx.save(graphs.fp32, str(tmp / GRAPH_FILES[FP32]))
        onnx.save(graphs.int8, str(tmp / GRAPH_FILES[INT8]))
        shutil.copyfile(exported.tokenizer_path, tmp / TOKENIZER_FILE)
        if record.drift_reference is not None:
            write_reference(tmp, record.drift_reference)
        meta = write_metadata(tmp, build_metadata(record, exported, graphs, stamp))
        parity, chosen = check_parity(tmp, meta, record.head, held_out, graphs.head_vs_sklearn, default_graph)
        meta = write_metadata(tmp, meta.replace(parity=parity, default_graph=chosen))
        return StagedArtifact(tmp, out_dir, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_staging_dir(out_dir: Path, stamp: datetime) -> Path:
    """A fresh `.NAME.tmp-*` beside a replaceable `out_dir` (stale ones of dead runs removed first)."""
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{stamp:%Y%m%d%H%M%S%f}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def is_model_dir(path: Path) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def check_replaceable(out_dir: Path) -> None:
    """Refuse a target that exists and is not a router artifact: it is the user's, not ours to replace."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a directory; refusing to replace it", file=str(out_dir))
    if is_model_dir(out_dir) or not any(out_dir.iterdir()):
        return
    raise ArtifactError(
        f"{out_dir} exists and is not a router model directory (no {METADATA_FILE}); refusing to replace it. "
        "Choose another --out or move that directory away.",
        file=str(out_dir),
    )


def publish(staged: StagedArtifact) -> Path:
    """Move the staged directory into place; the previous artifact (if any) goes only after that."""
    out_dir = staged.target
    check_replaceable(out_dir)  # checked again: the target may have appeared while we trained
    old = out_dir.parent / f".{out_dir.name}.old-{datetime.now(UTC):%Y%m%d%H%M%S%f}-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    staged.path.rename(out_dir)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def discard(staged: StagedArtifact) -> None:
    shutil.rmtree(staged.path, ignore_errors=True)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-\d+-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` left beside `out_dir` by runs whose process is gone."""
    removed: list[Path] = []
    parent = Path(out_dir).parent
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _TEMP.match(p.name)
        if m and m.group("name") == Path(out_dir).name and p.is_dir() and not _alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                shutil.rmtree(p)
                removed.append(p)
    return removed
