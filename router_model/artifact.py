"""The model directory: its one schema (`ArtifactMetadata`), how it is written, how it is verified.

A directory holds `model.onnx` (fp32 graph from token ids and request features to class
probabilities), `model.int8.onnx` (the same with a quantised embedder), `tokenizer.json` and
`metadata.json`. `ArtifactMetadata` is the only spelling of metadata.json: the training writer
builds one, `write_metadata` serialises it with `to_dict`, and every reader (the router, the
`info` command, the gRPC service) gets one back from `read_metadata` / `from_dict`, validated.
The metadata records the sha256 of every file; loading refuses a directory whose files are
missing, truncated, tampered with, or of an unknown format, naming the file and the problem.
Nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router_model.artifact_records import (
    POLICY_TIERS,
    DataRecord,
    EmbedderSpec,
    EscalationRecord,
    GoalRecord,
    MultiModelRecord,
    ParityRecord,
    PolicyRecord,
    plain_json,
)
from router_model.encoder import EncoderSettings
from router_model.errors import ArtifactError
from router_model.features import FEATURES
from router_model.settings import FP32, GRAPHS, INT8

__all__ = [
    "FP32",
    "POLICY_TIERS",
    "GRAPHS",
    "GRAPH_FILES",
    "INT8",
    "ArtifactMetadata",
    "DataRecord",
    "EmbedderSpec",
    "EscalationRecord",
    "GoalRecord",
    "MultiModelRecord",
    "ParityRecord",
    "PolicyRecord",
    "read_metadata",
    "sha256_file",
    "verify_file",
    "write_metadata",
]

log = logging.getLogger(__name__)

# 1: a cheap/strong pair (what the two-model path still writes); 2: N models (a `multi` section,
# training/multi); 3: a pair that escalates on its answer score (an `escalation` section, on). This code reads both; a version-1 directory of any age keeps loading.
FORMAT_VERSION = 3
PAIR_FORMAT_VERSION = 1
MULTI_FORMAT_VERSION = 2
# A pair that escalates on its answer score: an older reader must refuse it, since serving its
# routing threshold without the score would break the certified floor.
ESCALATION_FORMAT_VERSION = 3
METADATA_FILE = "metadata.json"
GRAPH_FILES: Mapping[str, str] = {FP32: "model.onnx", INT8: "model.int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
# No file of a router artifact comes near this (the fp32 graph of MiniLM is 90 MB): a bigger one is
# refused before it is hashed, so a hostile or mistaken directory cannot stall a load for minutes.
MAX_FILE_BYTES = 2 * 1024**3
PROBABILITIES_OUTPUT = "probabilities"
# The embedder's pooled output; merged graphs also expose it, for the drift distance (observe/drift.py).
EMBEDDING_OUTPUT = "sentence_embedding"
FEATURES_INPUT = "features"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ the schema


@dataclass(frozen=True)
class ArtifactMetadata:
    """metadata.json, validated. Optional parts default so older directories still load."""

    artifact_version: str
    cheap_model: str
    strong_model: str
    threshold: float
    goal: GoalRecord
    classes: tuple[str, ...]
    cheap_ok_classes: tuple[str, ...]
    embedder: EmbedderSpec
    features: tuple[str, ...]
    graphs: Mapping[str, str]
    default_graph: str
    files: Mapping[str, str] = field(default_factory=dict)
    created_at: str = ""
    target: str = ""
    head: str = ""
    calibration: str = ""
    quantization: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # {"test": evaluation, "validation_heads": ...}
    data: DataRecord | None = None
    parity: ParityRecord | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    price_as: Mapping[str, str] = field(default_factory=dict)  # unpriced model -> the priced model it was costed as
    prices: Mapping[str, Any] = field(default_factory=dict)  # what priced the pair (cost.PriceTable.provenance); {}: not recorded
    policy: PolicyRecord | None = None  # set for a day-0 policy artifact (training/policy), None for a trained router
    multi: MultiModelRecord | None = None  # set for an N-model router (format 2, training/multi)
    escalation: EscalationRecord | None = None  # the answer-quality score (format 3 when on), None: not tried
    format_version: int = PAIR_FORMAT_VERSION

    @property
    def cheap_ok_index(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.cheap_ok_classes)

    @property
    def encoder(self) -> EncoderSettings:
        return self.embedder.encoder

    @property
    def embedding_dim(self) -> int:
        return self.embedder.dim

    @property
    def test_metrics(self) -> Mapping[str, Any]:
        """The held-out evaluation recorded at training time ({} if none)."""
        test = self.metrics.get("test")
        return test if isinstance(test, Mapping) else {}

    def replace(self, **changes: Any) -> ArtifactMetadata:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": self.format_version,
            "artifact_version": self.artifact_version,
            "created_at": self.created_at,
            "cheap_model": self.cheap_model,
            "strong_model": self.strong_model,
            "threshold": self.threshold,
            "goal": self.goal.to_dict(),
            "target": self.target,
            "classes": list(self.classes),
            "cheap_ok_classes": list(self.cheap_ok_classes),
            "head": self.head,
            "calibration": self.calibration,
            "embedder": self.embedder.to_dict(),
            "features": list(self.features),
            "graphs": dict(self.graphs),
            "default_graph": self.default_graph,
            "quantization": plain_json(self.quantization),
            "metrics": plain_json(self.metrics),
            "versions": dict(self.versions),
            "price_as": dict(self.price_as),
            "files": dict(self.files),
        }
        if self.prices:
            d["prices"] = plain_json(self.prices)
        if self.data is not None:
            d["data"] = self.data.to_dict()
        if self.parity is not None:
            d["parity"] = self.parity.to_dict()
        if self.policy is not None:
            d["policy"] = self.policy.to_dict()
        if self.multi is not None:
            d["multi"] = self.multi.to_dict()
        if self.escalation is not None:
            d["escalation"] = self.escalation.to_dict()
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ArtifactMetadata:
        """Validate metadata.json's content; raise ArtifactError naming the field on any problem."""
        return _parse(raw)


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


def _plain_file_name(name: str) -> bool:
    """A name inside the directory: no separators, no '..', no NUL (the metadata never points elsewhere)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\x00"))


def _fail(msg: str) -> ArtifactError:
    return ArtifactError(msg, file=METADATA_FILE)


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise _fail(f"{key} must be an object, got {type(value).__name__}")
    return value


def _parse(raw: Mapping[str, Any]) -> ArtifactMetadata:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _fail(f"missing field(s) {missing}")
    version = raw["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise _fail(f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            f"format_version {version} was written by a newer router-model; this one reads up to {FORMAT_VERSION}. "
            "Upgrade router-model."
        )
    if version < 1:
        raise _fail(f"format_version {version} is not a known format")
    try:
        threshold = float(raw["threshold"])
        classes = tuple(str(c) for c in raw["classes"])
        cheap_ok = tuple(str(c) for c in raw["cheap_ok_classes"])
        embedder = EmbedderSpec.from_dict(raw["embedder"])
        goal = GoalRecord.from_dict(raw["goal"])
        features = tuple(str(f) for f in raw["features"])
        graphs = {str(k): str(v) for k, v in dict(raw["graphs"]).items()}
        files = {str(k): str(v) for k, v in dict(raw["files"]).items()}
        data = DataRecord.from_dict(raw["data"]) if raw.get("data") is not None else None
        parity = ParityRecord.from_dict(raw["parity"]) if raw.get("parity") is not None else None
        versions = {str(k): str(v) for k, v in dict(raw.get("versions", {})).items()}
        price_as = {str(k): str(v) for k, v in dict(raw.get("price_as", {})).items()}
        policy = PolicyRecord.from_dict(raw["policy"]) if raw.get("policy") is not None else None
        multi = MultiModelRecord.from_dict(raw["multi"]) if raw.get("multi") is not None else None
        escalation = EscalationRecord.from_dict(raw["escalation"]) if raw.get("escalation") is not None else None
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(f"malformed field: {e}") from e
    if not 0.0 <= threshold <= 1.0 + 1e-6:
        raise _fail(f"threshold must be in [0, 1], got {threshold}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise _fail(f"classes must be at least two distinct names, got {list(classes)}")
    if not cheap_ok or any(c not in classes for c in cheap_ok):
        raise _fail(f"cheap_ok_classes {list(cheap_ok)} must be a non-empty subset of classes {list(classes)}")
    for name in [*graphs.values(), *files]:
        if not _plain_file_name(name):
            raise _fail(f"file name {name!r} is not a plain file name inside the model directory")
    if raw["default_graph"] not in graphs:
        raise _fail(f"default_graph {raw['default_graph']!r} is not one of graphs {sorted(graphs)}")
    for name in [*graphs.values(), TOKENIZER_FILE]:
        if name not in files:
            raise _fail(f"no sha256 recorded for {name}")
    if policy is not None:
        _check_policy(policy, classes, cheap_ok)
    if (version == MULTI_FORMAT_VERSION) != (multi is not None):
        raise _fail(f"format_version {version} {'needs' if multi is None else 'cannot have'} a multi section")
    escalates = escalation is not None and escalation.on
    if (version == ESCALATION_FORMAT_VERSION) != escalates:
        raise _fail(f"format_version {version} {'needs' if not escalates else 'cannot have'} escalation.on")
    if escalates and escalation is not None and escalation.graph not in files:
        raise _fail(f"no sha256 recorded for the answer-score graph {escalation.graph!r}")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise _fail(f"request features {unknown} are unknown to this router-model version; upgrade it")
    return ArtifactMetadata(
        format_version=version,
        artifact_version=str(raw["artifact_version"]),
        created_at=str(raw.get("created_at", "")),
        cheap_model=str(raw["cheap_model"]),
        strong_model=str(raw["strong_model"]),
        threshold=threshold,
        goal=goal,
        target=str(raw.get("target", "")),
        classes=classes,
        cheap_ok_classes=cheap_ok,
        head=str(raw.get("head", "")),
        calibration=str(raw.get("calibration", "")),
        embedder=embedder,
        features=features,
        graphs=graphs,
        default_graph=str(raw["default_graph"]),
        quantization=plain_json(_mapping(raw, "quantization")),
        metrics=plain_json(_mapping(raw, "metrics")),
        data=data,
        parity=parity,
        versions=versions,
        price_as=price_as,
        prices=plain_json(_mapping(raw, "prices")),
        policy=policy,
        multi=multi,
        escalation=escalation,
        files=files,
    )


def _check_policy(policy: PolicyRecord, classes: tuple[str, ...], cheap_ok: tuple[str, ...]) -> None:
    """A policy's routes are the classes; its cheap routes are the cheap-ok classes."""
    if set(policy.routes) != set(classes):
        raise _fail(f"policy.routes {sorted(policy.routes)} must be the classes {sorted(classes)}")
    bad = {r: t for r, t in policy.routes.items() if t not in POLICY_TIERS}
    if bad:
        raise _fail(f"policy.routes tiers must be one of {list(POLICY_TIERS)}, got {bad}")
    cheap = {r for r, t in policy.routes.items() if t == "cheap"}
    if cheap != set(cheap_ok):
        raise _fail(f"policy cheap routes {sorted(cheap)} must be the cheap_ok_classes {sorted(cheap_ok)}")


# ------------------------------------------------------------------------------ reading and writing


def read_metadata(model_dir: str | Path) -> ArtifactMetadata:
    """Read and validate `model_dir/metadata.json` (files are verified separately, by `verify_file`)."""
    path = Path(model_dir) / METADATA_FILE
    if not Path(model_dir).is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist", file=str(model_dir))
    if not path.is_file():
        raise _fail(f"not found in {model_dir}; is this a router-model directory?")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _fail(f"is {path.stat().st_size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(f"not valid JSON ({e}); the file is truncated or corrupt") from e
    except RecursionError:
        raise _fail("nested too deeply to be a router artifact's metadata") from None
    if not isinstance(raw, dict):
        raise _fail("must hold a JSON object")
    meta = ArtifactMetadata.from_dict(raw)
    _warn_if_newer(meta.versions)
    return meta


def verify_file(model_dir: str | Path, name: str, expected_sha256: str) -> Path:
    """Refuse a missing, oversized or modified file; returns its path.

    The sha256 values live in metadata.json beside the files: they catch truncation, corruption
    and accidental edits, not a deliberate forgery (whoever can rewrite a graph can rewrite the
    metadata too). Protect the directory like code.
    """
    path = Path(model_dir) / name
    if not path.is_file():
        raise ArtifactError(f"missing from {model_dir}", file=name)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ArtifactError(f"is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for an artifact file; not hashed", file=name)
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"sha256 mismatch (expected {expected_sha256[:16]}..., got {actual[:16]}...): the file is truncated, "
            "corrupt or was modified after training",
            file=name,
        )
    return path


def write_metadata(model_dir: str | Path, metadata: ArtifactMetadata) -> ArtifactMetadata:
    """Record every file's sha256 and write metadata.json last, so a half-written dir never verifies."""
    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != METADATA_FILE)
    version = (MULTI_FORMAT_VERSION if metadata.multi is not None
               else ESCALATION_FORMAT_VERSION if metadata.escalation is not None and metadata.escalation.on
               else PAIR_FORMAT_VERSION)  # a pair that does not escalate stays readable by old code
    full = metadata.replace(format_version=version, files={n: sha256_file(model_dir / n) for n in names})
    text = json.dumps(full.to_dict(), indent=2, sort_keys=True)
    checked = ArtifactMetadata.from_dict(json.loads(text))  # what a reader will get back
    tmp = model_dir / (METADATA_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(model_dir / METADATA_FILE)
    return checked


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

    saved = versions.get("router_model")
    if isinstance(saved, str) and _version_tuple(saved) > _version_tuple(__version__):
        log.warning(
            "this model was saved with router-model %s, newer than the installed %s; upgrade if loading misbehaves",
            saved,
            __version__,
        )
