"""How tests/toy_artifact.py builds a model directory: staging, graphs, metadata, drift reference.

The writers of tests/toy_artifact.py stage the files in a sibling directory (`stage_directory`),
write the fp32 and int8 graphs and the tokenizer (`write_graphs`), the metadata common to every
toy (`base_metadata`: versions, graphs, the held-out figures) and, for a pair, a drift reference
over REFERENCE_PROMPTS computed with the numpy mirror of the graph (`toy_drift_reference`), then
publish the directory in two renames (`publish_directory`), as training/artifact/writer.py does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
from toy_graphs import int8_like, logit, sigmoid, toy_tokenizer

import router_model
from router_model.artifact import FP32, GRAPH_FILES, INT8, METADATA_FILE, TOKENIZER_FILE, ArtifactMetadata, EmbedderSpec
from router_model.drift_reference import (
    FAR_QUANTILE,
    Binned,
    Categorical,
    DriftReference,
    EmbeddingSummary,
    nearest_centroid_distance,
)
from router_model.encoder import EncoderSettings

TOY_EMBEDDER = "toy-word-table"

# Prompts the drift reference describes (its "training data"): traffic made of them shows no drift.
REFERENCE_PROMPTS = (
    "Translate this sentence into French.",
    "Translate the following email into Spanish.",
    "Summarise this text in five words.",
    "Summarize the following review.",
    "Classify the sentiment of this review.",
    "Extract the dates from this email.",
    "Extract the names from the following text.",
    "Classify this email.",
    "Prove the theorem.",
    "Prove that the square root of two is irrational.",
    "Derive the sum of the series.",
    "Prove this lemma by induction.",
    "What is the integral of sin x?",
    "Give a proof that there are infinitely many prime numbers.",
    "Write a short story.",
    "What is this code about?",
    "Hello, how are you?",
    "Write a poem about the sea.",
    "Describe the image.",
    "Why is the sky blue?",
)


def package_versions() -> dict[str, str]:
    out = {"router_model": router_model.__version__}
    for pkg in ("onnx", "onnxruntime", "tokenizers", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def embedder_spec(table: np.ndarray, max_length: int, truncation: str, model_inputs: Sequence[str]) -> EmbedderSpec:
    return EmbedderSpec(
        name=TOY_EMBEDDER,
        pooling="mean",
        normalize=False,
        dim=int(table.shape[1]),
        encoder=EncoderSettings(max_length=max_length, truncation=truncation, model_inputs=tuple(model_inputs)),
        weights_sha256=hashlib.sha256(table.tobytes()).hexdigest(),
    )


def toy_artifact_version(kind: str, seed: int, version: str | None, *parts: object) -> str:
    if version is not None:
        return version
    digest = hashlib.sha256(json.dumps([kind, seed, *[str(p) for p in parts]]).encode()).hexdigest()[:8]
    return f"toy-{kind}-s{seed}-{digest}"


def encoder_inputs(token_type_ids: bool) -> tuple[str, ...]:
    return ("input_ids", "attention_mask", "token_type_ids") if token_type_ids else ("input_ids", "attention_mask")


def stage_directory(path: Path) -> Path:
    """A fresh staging directory beside `path` (published by `publish_directory`, as training/artifact/writer.py does).

    `path` may be absent, an empty directory or a model directory (rewritten in place, e.g. a second
    version for a hot-reload test); anything else is refused, never deleted.
    """
    if path.exists() and not (path.is_dir() and ((path / METADATA_FILE).is_file() or not any(path.iterdir()))):
        raise FileExistsError(f"{path} exists and is not a model directory nor empty; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.toy-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_directory(tmp: Path, path: Path) -> Path:
    """Replace `path` with the finished directory in two renames (a watcher never sees a half-written one)."""
    old = path.parent / f".{path.name}.toy-old"
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def write_graphs(tmp: Path, build, table: np.ndarray, max_length: int) -> bytes:
    fp32 = build(table)
    onnx.save(fp32, str(tmp / GRAPH_FILES[FP32]))
    onnx.save(build(int8_like(table)), str(tmp / GRAPH_FILES[INT8]))
    toy_tokenizer(max_length).save(str(tmp / TOKENIZER_FILE))
    return fp32.SerializeToString()


def base_metadata(**fields) -> ArtifactMetadata:
    return ArtifactMetadata(
        created_at=datetime.now(UTC).isoformat(),
        graphs=dict(GRAPH_FILES),
        versions=package_versions(),
        calibration="none (toy artifact: hand-set weights, tests/toy_artifact.py)",
        # one numeric leaf, as a trained artifact's held-out metrics have many (GetModelInfo.metrics)
        metrics={"toy": True, "held_out": {"rows": len(REFERENCE_PROMPTS)}},
        **fields,
    )


def toy_drift_reference(table: np.ndarray, threshold: float, neutral_p: float, max_length: int) -> DriftReference:
    """A reference over REFERENCE_PROMPTS, computed with the numpy mirror of the graph."""
    tok = toy_tokenizer(max_length)
    tok.no_padding()
    emb, p, n_tokens = [], [], []
    for text in REFERENCE_PROMPTS:
        ids = tok.encode(text).ids
        e = table[ids].mean(axis=0)
        emb.append(e)
        p.append(sigmoid(logit(neutral_p) - float(e[0])))
        n_tokens.append(len(tok.encode(text, add_special_tokens=False).ids))
    E = np.asarray(emb, dtype=np.float32)
    unit = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    p_arr = np.asarray(p)
    groups = [unit[p_arr >= threshold + 0.05], unit[p_arr < threshold - 0.05], unit[np.abs(p_arr - threshold) < 0.05]]
    centroids = np.asarray([g.mean(axis=0) for g in groups if len(g)], dtype=np.float32)
    dist = nearest_centroid_distance(E, centroids)
    radius = float(np.quantile(dist, FAR_QUANTILE))
    return DriftReference(
        n=len(REFERENCE_PROMPTS),
        split="toy",
        threshold=float(threshold),
        strong_share=float(np.mean(p_arr < threshold)),
        p_cheap_ok=Binned.of(p_arr, 5),
        prompt_tokens=Binned.of(np.asarray(n_tokens, dtype=np.float64), 5),
        reasons=Categorical({"classifier": 1.0}),
        embedding=EmbeddingSummary(centroids, Binned.of(dist, 5), radius, float(np.mean(dist > radius))),
    )
