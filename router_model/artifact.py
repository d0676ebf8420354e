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

from router_model.decision import RoutingRules
from router_model.encoder import EncoderSettings
from router_model.errors import ArtifactError
from router_model.multi import PASS_OUTPUT, RULE_KINDS, SINGLE, CostModel
from router_model.prompt_digest import PromptDigest
from router_model.settings import FP32, GRAPHS, INT8

__all__ = [
    "FP32",
    "GRAPHS",
    "GRAPH_FILES",
    "INT8",
    "ArtifactMetadata",
    "DataRecord",
    "EmbedderSpec",
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
# training/multi). This code reads both; a version-1 directory of any age keeps loading.
FORMAT_VERSION = 2
PAIR_FORMAT_VERSION = 1
MULTI_FORMAT_VERSION = 2
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
class EmbedderSpec:
    """What the artifact records about the embedder: enough to tokenise exactly as training did."""

    name: str
    pooling: str
    normalize: bool
    dim: int
    encoder: EncoderSettings
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder"]["model_inputs"] = list(self.encoder.model_inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbedderSpec:
        enc = dict(d["encoder"])
        enc["model_inputs"] = tuple(enc["model_inputs"])
        return cls(
            name=str(d["name"]),
            pooling=str(d["pooling"]),
            normalize=bool(d["normalize"]),
            dim=int(d["dim"]),
            encoder=EncoderSettings(**enc),
            weights_sha256=str(d["weights_sha256"]),
        )


@dataclass(frozen=True)
class GoalRecord:
    """The goal the threshold was chosen for, its risk and method, and what was certified (docs/guarantee.md).

    Everything after `met_on_validation` is optional: directories written before risk control
    load with the empirical method, no risk and no certified floor.
    """

    kind: str
    value: float
    met_on_validation: bool | None = None
    risk: float | None = None  # allowed chance the goal fails on new traffic; None: no guarantee
    method: str = "empirical"
    certified: bool | None = None  # whether any routing beyond the safe end was certified
    certified_floor: float | None = None  # quality floor (fraction of always-strong) the threshold is certified at
    bound: float | None = None  # floor: lower bound on quality / strong; budget: upper bound on the spend
    n_labelled: int | None = None  # rows the threshold was chosen on
    n_needed: int | None = None  # not certified: rows that would certify the best gap observed
    threshold_rows: str = "validation"  # "validation" or "oof" (cross-fitted train + validation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GoalRecord:
        def opt(name: str, cast: Any) -> Any:
            v = d.get(name)
            if v is None:
                return None
            try:
                return cast(v)
            except (TypeError, ValueError):
                raise ArtifactError(f"metadata.json: goal.{name} must be a {cast.__name__}, got {v!r}") from None

        return cls(
            str(d["kind"]),
            float(d["value"]),
            opt("met_on_validation", bool),
            risk=opt("risk", float),
            method=str(d.get("method") or "empirical"),
            certified=opt("certified", bool),
            certified_floor=opt("certified_floor", float),
            bound=opt("bound", float),
            n_labelled=opt("n_labelled", int),
            n_needed=opt("n_needed", int),
            threshold_rows=str(d.get("threshold_rows") or "validation"),
        )

    def describe(self) -> str:
        """One line for summaries: goal, risk, method and what was certified."""
        head = f"{self.kind}={self.value:g}"
        if self.risk is None:
            return f"{head}, no risk control (method {self.method}; met on validation: {self.met_on_validation})"
        rows = f" on {self.n_labelled} {self.threshold_rows} rows" if self.n_labelled else ""
        if self.kind != "quality_floor":
            state = f"certified (upper bound {self.bound:.4g})" if self.certified else "not certified: all cheap"
        elif self.certified:
            state = f"certified floor {self.certified_floor:.3f} of always-strong"
        else:
            need = f"; about {self.n_needed:,} labelled rows would certify the best gap seen" if self.n_needed else ""
            state = f"nothing cheap certified: all strong (floor 1.000){need}"
        return f"{head} at risk {self.risk:g} (method {self.method}{rows}): {state}"


@dataclass(frozen=True)
class DataRecord:
    """Which log the router was trained on, and what the reader made of it."""

    files: tuple[str, ...]
    sha256: str
    rows_read: int
    rows_used: int
    skipped: Mapping[str, int]
    split_rows: Mapping[str, int]
    pass_threshold: float
    trained_prompts: PromptDigest | None = None  # train + validation prompts (membership only)

    def to_dict(self) -> dict[str, Any]:
        extra = {"trained_prompts": self.trained_prompts.to_dict()} if self.trained_prompts is not None else {}
        return {
            **extra,
            "files": list(self.files),
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "skipped": dict(self.skipped),
            "split_rows": dict(self.split_rows),
            "pass_threshold": self.pass_threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataRecord:
        return cls(
            files=tuple(str(f) for f in d.get("files", ())),
            sha256=str(d.get("sha256", "")),
            rows_read=int(d.get("rows_read", 0)),
            rows_used=int(d.get("rows_used", 0)),
            skipped={str(k): int(v) for k, v in dict(d.get("skipped", {})).items()},
            split_rows={str(k): int(v) for k, v in dict(d.get("split_rows", {})).items()},
            pass_threshold=float(d.get("pass_threshold", 0.8)),
            trained_prompts=PromptDigest.from_dict(d["trained_prompts"]) if d.get("trained_prompts") else None,
        )


@dataclass(frozen=True)
class ParityRecord:
    """How closely the exported graphs match the sklearn pipeline and each other (test split)."""

    head_onnx_vs_sklearn_max_abs: float
    fp32_graph_vs_sklearn_max_abs: float
    int8_decision_agreement: float
    int8_apgr_abs_diff: float
    int8_max_abs_diff: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParityRecord:
        return cls(
            head_onnx_vs_sklearn_max_abs=float(d["head_onnx_vs_sklearn_max_abs"]),
            fp32_graph_vs_sklearn_max_abs=float(d["fp32_graph_vs_sklearn_max_abs"]),
            int8_decision_agreement=float(d["int8_decision_agreement"]),
            int8_apgr_abs_diff=float(d["int8_apgr_abs_diff"]),
            int8_max_abs_diff=float(d["int8_max_abs_diff"]),
            n=int(d["n"]),
        )


POLICY_TIERS = ("cheap", "strong")
_POLICY_RULE_KEYS = ("image_to_strong", "strong_tags", "max_tokens")


@dataclass(frozen=True)
class PolicyRecord:
    """A day-0 policy artifact (training/policy): its classes are the policy's routes, scored by
    similarity to written example requests; no outcome labels were used. Absent for trained routers."""

    name: str
    routes: Mapping[str, str]  # route name -> "cheap" | "strong" (the classes, whose order is `classes`')
    examples: Mapping[str, int]  # route name -> number of example requests
    rules: Mapping[str, Any]  # the RoutingRules the policy asks for (image_to_strong, strong_tags, max_tokens)
    scoring: Mapping[str, float] = field(default_factory=dict)  # how similarities become probabilities
    source: str = ""  # the policy file, copied into the directory
    source_sha256: str = ""

    def routing_rules(self) -> RoutingRules:
        """The rules to apply when the caller names none."""
        r = dict(self.rules)
        tags = r.get("strong_tags")
        return RoutingRules(**{**r, **({"strong_tags": frozenset(tags)} if tags is not None else {})})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "routes": dict(self.routes),
            "examples": dict(self.examples),
            "rules": _plain(self.rules),
            "scoring": dict(self.scoring),
            "source": self.source,
            "source_sha256": self.source_sha256,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyRecord:
        rules = dict(d.get("rules", {}))
        unknown = sorted(set(rules) - set(_POLICY_RULE_KEYS))
        if unknown:
            raise ValueError(f"policy.rules has unknown key(s) {unknown}")
        return cls(
            name=str(d["name"]),
            routes={str(k): str(v) for k, v in dict(d["routes"]).items()},
            examples={str(k): int(v) for k, v in dict(d.get("examples", {})).items()},
            rules=rules,
            scoring={str(k): float(v) for k, v in dict(d.get("scoring", {})).items()},
            source=str(d.get("source", "")),
            source_sha256=str(d.get("source_sha256", "")),
        )


@dataclass(frozen=True)
class MultiModelRecord:
    """An N-model router (format 2): the graph's pass/ok columns, the serving rule and per-model dollars.

    `models` are the graph's column order, cheapest first; output `output` holds P(pass) for each,
    then P(ok) (loses nothing against every pricier model) for each: shape (batch, 2N).
    """

    models: tuple[str, ...]
    policy: str
    value: float
    cost_models: tuple[CostModel, ...]
    best_single: str
    output: str = PASS_OUTPUT
    cost_source: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "policy": self.policy,
            "value": "inf" if self.value == float("inf") else self.value,
            "cost_models": [c.to_dict() for c in self.cost_models],
            "best_single": self.best_single,
            "output": self.output,
            "cost_source": dict(self.cost_source),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiModelRecord:
        models = tuple(str(m) for m in d["models"])
        rec = cls(
            models=models,
            policy=str(d["policy"]),
            value=float(d["value"]),
            cost_models=tuple(CostModel.from_dict(c) for c in d["cost_models"]),
            best_single=str(d["best_single"]),
            output=str(d.get("output", PASS_OUTPUT)),
            cost_source={str(k): str(v) for k, v in dict(d.get("cost_source", {})).items()},
        )
        if len(models) < 2 or len(set(models)) != len(models):
            raise ValueError(f"multi.models must be at least two distinct names, got {list(models)}")
        if rec.policy not in RULE_KINDS:
            raise ValueError(f"multi.policy {rec.policy!r} is not one of {list(RULE_KINDS)}")
        if rec.policy == SINGLE and not (rec.value == int(rec.value) and 0 <= rec.value < len(models)):
            raise ValueError(f"multi.value of policy 'single' must be a model column 0..{len(models) - 1}, "
                             f"got {rec.value}")
        if tuple(c.model for c in rec.cost_models) != models:
            raise ValueError("multi.cost_models must name multi.models, in order")
        if rec.best_single not in models:
            raise ValueError(f"multi.best_single {rec.best_single!r} is not one of multi.models")
        return rec


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
    policy: PolicyRecord | None = None  # set for a day-0 policy artifact (training/policy), None for a trained router
    multi: MultiModelRecord | None = None  # set for an N-model router (format 2, training/multi)
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
            "quantization": _plain(self.quantization),
            "metrics": _plain(self.metrics),
            "versions": dict(self.versions),
            "price_as": dict(self.price_as),
            "files": dict(self.files),
        }
        if self.data is not None:
            d["data"] = self.data.to_dict()
        if self.parity is not None:
            d["parity"] = self.parity.to_dict()
        if self.policy is not None:
            d["policy"] = self.policy.to_dict()
        if self.multi is not None:
            d["multi"] = self.multi.to_dict()
        return d

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ArtifactMetadata:
        """Validate metadata.json's content; raise ArtifactError naming the field on any problem."""
        return _parse(raw)


def _plain(value: Any) -> Any:
    """JSON-ready copies of nested mappings (metadata holds read-only views after parsing)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
    if (version >= MULTI_FORMAT_VERSION) != (multi is not None):
        raise _fail(f"format_version {version} {'needs' if multi is None else 'cannot have'} a multi section")
    from router_model.features import FEATURES

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
        quantization=_plain(_mapping(raw, "quantization")),
        metrics=_plain(_mapping(raw, "metrics")),
        data=data,
        parity=parity,
        versions=versions,
        price_as=price_as,
        policy=policy,
        multi=multi,
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
    version = MULTI_FORMAT_VERSION if metadata.multi is not None else PAIR_FORMAT_VERSION  # a pair stays readable by old code
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
