"""The model directory: what it holds, how it is written, and how it is verified at load.

A directory holds `model.onnx` (fp32 graph from token ids and request features to class
probabilities), `model.int8.onnx` (the same with a dynamically quantised embedder),
`tokenizer.json` and `metadata.json`. The metadata records the sha256 of every file; loading
refuses a directory whose files are missing, truncated, tampered with, or of an unknown format,
naming the file and the problem. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_model.encoder import EncoderSettings
from router_model.errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
GRAPH_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
PROBABILITIES_OUTPUT = "probabilities"
FEATURES_INPUT = "features"
_REQUIRED = (
    "format_version",
    "artifact_version",
    "cheap_model",
    "strong_model",
    "threshold",
    "goal",
    "classes",
    "cheap_ok_classes",
    "embedder",
    "features",
    "graphs",
    "default_graph",
    "files",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ArtifactMetadata:
    """The validated fields of metadata.json the router relies on; `raw` keeps everything."""

    format_version: int
    artifact_version: str
    cheap_model: str
    strong_model: str
    threshold: float
    classes: tuple[str, ...]
    cheap_ok_classes: tuple[str, ...]
    features: tuple[str, ...]
    encoder: EncoderSettings
    embedding_dim: int
    graphs: Mapping[str, str]
    default_graph: str
    files: Mapping[str, str]
    raw: Mapping[str, Any]

    @property
    def cheap_ok_index(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.cheap_ok_classes)


def _fail(msg: str) -> ArtifactError:
    return ArtifactError(msg, file=METADATA_FILE)


def parse_metadata(raw: Mapping[str, Any]) -> ArtifactMetadata:
    """Validate metadata.json's content; raise ArtifactError naming the field on any problem."""
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _fail(f"missing field(s) {missing}")
    version = raw["format_version"]
    if not isinstance(version, int):
        raise _fail(f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            f"format_version {version} was written by a newer router-model; this one reads up to {FORMAT_VERSION}. Upgrade router-model."
        )
    if version < 1:
        raise _fail(f"format_version {version} is not a known format")
    try:
        threshold = float(raw["threshold"])
        classes = tuple(str(c) for c in raw["classes"])
        cheap_ok = tuple(str(c) for c in raw["cheap_ok_classes"])
        emb = raw["embedder"]
        enc = dict(emb["encoder"])
        enc["model_inputs"] = tuple(enc["model_inputs"])
        encoder = EncoderSettings(**enc)
        dim = int(emb["dim"])
        features = tuple(str(f) for f in raw["features"])
        graphs = {str(k): str(v) for k, v in dict(raw["graphs"]).items()}
        files = {str(k): str(v) for k, v in dict(raw["files"]).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(f"malformed field: {e}") from e
    if not 0.0 <= threshold <= 1.0 + 1e-6:
        raise _fail(f"threshold must be in [0, 1], got {threshold}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise _fail(f"classes must be at least two distinct names, got {list(classes)}")
    if not cheap_ok or any(c not in classes for c in cheap_ok):
        raise _fail(f"cheap_ok_classes {list(cheap_ok)} must be a non-empty subset of classes {list(classes)}")
    if raw["default_graph"] not in graphs:
        raise _fail(f"default_graph {raw['default_graph']!r} is not one of graphs {sorted(graphs)}")
    for name in [*graphs.values(), TOKENIZER_FILE]:
        if name not in files:
            raise _fail(f"no sha256 recorded for {name}")
    from router_model.features import FEATURES

    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise _fail(f"request features {unknown} are unknown to this router-model version; upgrade it")
    return ArtifactMetadata(
        format_version=version,
        artifact_version=str(raw["artifact_version"]),
        cheap_model=str(raw["cheap_model"]),
        strong_model=str(raw["strong_model"]),
        threshold=threshold,
        classes=classes,
        cheap_ok_classes=cheap_ok,
        features=features,
        encoder=encoder,
        embedding_dim=dim,
        graphs=graphs,
        default_graph=str(raw["default_graph"]),
        files=files,
        raw=dict(raw),
    )


def read_metadata(model_dir: Path) -> ArtifactMetadata:
    path = Path(model_dir) / METADATA_FILE
    if not Path(model_dir).is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist", file=str(model_dir))
    if not path.is_file():
        raise _fail(f"not found in {model_dir}; is this a router-model directory?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(f"not valid JSON ({e}); the file is truncated or corrupt") from e
    if not isinstance(raw, dict):
        raise _fail("must hold a JSON object")
    meta = parse_metadata(raw)
    _warn_if_newer(meta.raw.get("versions", {}))
    return meta


def verify_file(model_dir: Path, name: str, expected_sha256: str) -> Path:
    """Refuse a missing or modified file; returns its path."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise ArtifactError(f"missing from {model_dir}", file=name)
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"sha256 mismatch (expected {expected_sha256[:16]}..., got {actual[:16]}...): the file is truncated, "
            "corrupt or was modified after training",
            file=name,
        )
    return path


def write_metadata(model_dir: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Record every file's sha256 and write metadata.json last, so a half-written dir never verifies."""
    model_dir = Path(model_dir)
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != METADATA_FILE)
    full = {**metadata, "format_version": FORMAT_VERSION, "files": {n: sha256_file(model_dir / n) for n in files}}
    parse_metadata(full)
    tmp = model_dir / (METADATA_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(model_dir / METADATA_FILE)
    return full


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _warn_if_newer(versions: Mapping[str, Any]) -> None:
    from router_model import __version__

    saved = versions.get("router_model") if isinstance(versions, Mapping) else None
    if isinstance(saved, str) and _version_tuple(saved) > _version_tuple(__version__):
        log.warning(
            "this model was saved with router-model %s, newer than the installed %s; upgrade if loading misbehaves",
            saved,
            __version__,
        )
