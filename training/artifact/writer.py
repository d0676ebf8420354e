"""Write, verify and publish a model directory: one path for every kind of artifact.

A kind (the pair router: training/artifact/pair.py, the N-model router: training/multi/artifact.py,
the day-0 policy: training/policy/builder.py) supplies three things: its head as an ONNX graph
(`HeadGraph`, already compared with the kind's own computation), its metadata, and its parity
check. `stage_artifact` does the rest, the same way for each:

1. stage a directory beside the target (`.NAME.tmp-*`);
2. merge the head with the fp32 and the int8 embedder (`build_router_graphs`; a static embedder
   has no MatMul to calibrate, so its int8 graph is the row-scaled table alone) and write both
   graphs, the tokenizer, the kind's extra files and metadata.json;
3. hand the staged directory to the kind's parity check (which loads it back through the
   inference package), pick the default graph from its verdict, and rewrite metadata.json.

The caller then does whatever else can fail (plots, tracking) against the staged directory and
`publish`es it, last. So a failed run never replaces a good model, and a service watching the
directory only ever sees finished, verified artifacts.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

from router_model.artifact import (
    FP32,
    GRAPH_FILES,
    INT8,
    METADATA_FILE,
    PROBABILITIES_OUTPUT,
    TOKENIZER_FILE,
    ArtifactMetadata,
    write_metadata,
)
from router_model.errors import ArtifactError
from training.artifact.graph import merge_router_graph
from training.artifact.quantize import QuantizedEmbedder, calibration_feeds, quantize_embedder
from training.embedding.onnx_embedder import ExportedEmbedder
from training.embedding.static import is_static

# int8 is served by default when, on the held-out split, at least 99% of its decisions agree with
# fp32 and its APGR is within 0.005. The int8 graph (training/artifact/quantize.py) agrees on ~99.3%
# of the public router's held-out decisions; the flips are prompts within ~0.005 of the threshold.
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_APGR_DIFF = 0.005
FP32_MAX_DIFF = 1e-4
FP32_PARITY_ROWS = 512  # test rows the fp32 graph is checked on (int8: all of them)
DEFAULT_GRAPH_CHOICES = ("auto", *GRAPH_FILES)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("router-model", "onnx", "onnxruntime", "tokenizers", "numpy", "scikit-learn", "skl2onnx",
                "sentence-transformers", "transformers", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg.replace("-", "_")] = version(pkg)
    return out


# ------------------------------------------------------------------------------ what a kind supplies


@dataclass(frozen=True)
class HeadGraph:
    """A kind's head as ONNX (`head_input` -> `output`), with its largest difference from the kind's own
    computation (sklearn, the numpy heads, the policy's reference scoring), which must stay within FP32_MAX_DIFF."""

    model: onnx.ModelProto
    vs_reference: float
    reference: str  # what it was compared with, named if it differs
    n_features: int = 0  # request features concatenated after the embedding
    output: str = PROBABILITIES_OUTPUT


@dataclass(frozen=True)
class Stamp:
    """What every artifact's metadata takes from the writer: version, time, graph files and the int8 recipe."""

    artifact_version: str
    created_at: str
    quantization: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of `ArtifactMetadata` (the default graph is fp32 until the parity check has run)."""
        return {
            "artifact_version": self.artifact_version,
            "created_at": self.created_at,
            "graphs": dict(GRAPH_FILES),
            "default_graph": FP32,
            "quantization": dict(self.quantization),
            "versions": _versions(),
        }


@dataclass(frozen=True)
class ParityCheck:
    """A kind's verdict on the staged directory: may int8 be served, and what metadata.json records of the
    check (fields of `ArtifactMetadata`, e.g. {"parity": ParityRecord(...)})."""

    int8_ok: bool
    record: Mapping[str, Any]


MetadataFn = Callable[[Stamp], ArtifactMetadata]
ParityFn = Callable[[Path, ArtifactMetadata], ParityCheck]


# ------------------------------------------------------------------------------ graphs


@dataclass(frozen=True)
class RouterGraphs:
    """The head merged with the fp32 and with the int8 embedder."""

    fp32: onnx.ModelProto
    int8: onnx.ModelProto
    quantized: QuantizedEmbedder


def build_router_graphs(head: HeadGraph, exported: ExportedEmbedder, calibration_texts: Sequence[str], *,
                        seed: int = 0) -> RouterGraphs:
    """Merge the head with the fp32 and the int8 embedder (int8 calibrated on `calibration_texts` only)."""
    if not head.vs_reference <= FP32_MAX_DIFF:
        raise ArtifactError(f"the ONNX head differs from {head.reference} by {head.vs_reference:.2e} (> {FP32_MAX_DIFF})")
    dim = exported.spec.dim
    fp32 = merge_router_graph(onnx.load(str(exported.onnx_path)), head.model, dim, n_features=head.n_features, output=head.output)
    # A static embedder has no MatMul to calibrate: its int8 graph is the row-scaled int8 table alone.
    if is_static(exported.spec.name):
        feeds = []
    else:
        feeds = calibration_feeds(exported.text_encoder(), calibration_texts, seed=seed)
    quantized = quantize_embedder(exported.onnx_path, feeds)
    int8 = merge_router_graph(quantized.model, head.model, dim, n_features=head.n_features, output=head.output)
    return RouterGraphs(fp32, int8, quantized)


def choose_default_graph(default_graph: str, int8_ok: bool) -> str:
    """`auto`: int8 when the kind's parity check passed it, else fp32; `fp32` / `int8`: as asked."""
    if default_graph not in DEFAULT_GRAPH_CHOICES:
        raise ValueError(f"default_graph must be auto or one of {sorted(GRAPH_FILES)}, got {default_graph!r}")
    if default_graph != "auto":
        return default_graph
    return INT8 if int8_ok else FP32


# ------------------------------------------------------------------------------ staging


@dataclass(frozen=True)
class StagedArtifact:
    """A verified model directory beside its target, not yet published."""

    path: Path
    target: Path
    metadata: ArtifactMetadata


def stage_artifact(
    out_dir: Path,
    *,
    head: HeadGraph,
    exported: ExportedEmbedder,
    calibration_texts: Sequence[str],
    metadata: MetadataFn,
    check_parity: ParityFn,
    default_graph: str = "auto",
    extra_files: Callable[[Path], object] | None = None,
    seed: int = 0,
) -> StagedArtifact:
    """Build, write and verify a model directory in a temporary beside `out_dir` (removed again on any failure).

    `metadata(stamp)` returns the kind's metadata (built with `**stamp.fields()`); `extra_files(dir)` writes
    the kind's own files (the drift reference, the source policy) before metadata.json hashes them;
    `check_parity(dir, metadata)` loads the staged directory back and returns its verdict.
    """
    out_dir = Path(out_dir)
    choose_default_graph(default_graph, True)  # a bad value fails before any work
    now = datetime.now(UTC)
    tmp = new_staging_dir(out_dir, now)
    try:
        graphs = build_router_graphs(head, exported, calibration_texts, seed=seed)
        onnx.save(graphs.fp32, str(tmp / GRAPH_FILES[FP32]))
        onnx.save(graphs.int8, str(tmp / GRAPH_FILES[INT8]))
        shutil.copyfile(exported.tokenizer_path, tmp / TOKENIZER_FILE)
        if extra_files is not None:
            extra_files(tmp)
        digest = hashlib.sha256(head.model.SerializeToString()).hexdigest()[:8]
        stamp = Stamp(f"{now:%Y%m%dT%H%M%SZ}-{digest}", now.isoformat(), graphs.quantized.summary())
        meta = write_metadata(tmp, metadata(stamp))
        check = check_parity(tmp, meta)
        chosen = choose_default_graph(default_graph, check.int8_ok)
        meta = write_metadata(tmp, meta.replace(**check.record, default_graph=chosen))
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
