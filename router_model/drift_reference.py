"""The drift reference: `drift_reference.json`'s schema and the statistics it is built from.

Owned here, below the router, because the router reads it at load time (centroid distances come
from the same graph run as the decision); `router_model/observe/drift.py` compares live traffic
against it and `training/artifact/reference.py` writes it. numpy only: it runs on the serving path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import verify_file
from router_model.errors import ArtifactError

REFERENCE_FILE = "drift_reference.json"
REFERENCE_FORMAT = 1
PSI_MODERATE = 0.1
PSI_DRIFT = 0.25
PSI_FLOOR = 1e-4  # the share an empty bin counts as
FAR_QUANTILE = 0.99  # the "far" radius: this quantile of the reference distances
STABLE, MODERATE, DRIFT, NO_DATA = "stable", "moderate", "drift", "no data"
# Share checks flag only a difference beyond both the tolerance and this many standard errors,
# so a small window does not raise an alarm on sampling noise alone.
SHARE_SIGMAS = 3.0
ROLLING_WINDOW = 1000  # decisions the service's and the gateway's gauges look back over


class DriftReferenceError(ArtifactError):
    """The model directory's drift reference is missing or malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, file=REFERENCE_FILE)


class NoReferenceError(DriftReferenceError):
    """The model directory has no drift reference (trained before references were recorded)."""


# ------------------------------------------------------------------------------ statistics


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of `actual` against `expected` (shares or counts per bin, same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"expected and actual must be 1-d and of one length, got shapes {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("bin shares must be non-negative with a positive total")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_band(value: float | None) -> str:
    """stable (< 0.1), moderate (0.1 to 0.25), drift (>= 0.25); `no data` for None."""
    if value is None or math.isnan(value):
        return NO_DATA
    return DRIFT if value >= PSI_DRIFT else MODERATE if value >= PSI_MODERATE else STABLE


def quantile_edges(values: Sequence[float] | np.ndarray, n_bins: int = 10) -> tuple[float, ...]:
    """Interior bin edges at the quantiles of `values` (repeated edges merged, so ties share a bin)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to bin")
    qs = np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    edges = np.unique(qs)
    # Bins are right-closed, so an edge at the maximum would leave the last bin empty by construction.
    return tuple(float(x) for x in edges if x < v.max())


@dataclass(frozen=True)
class Binned:
    """A reference distribution over bins: bin i holds edges[i-1] < x <= edges[i] (right-closed, so a
    value repeated at a quantile, common for token counts, fills the bin that ends there)."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares, got {len(self.shares)}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be strictly increasing")

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray, n_bins: int = 10) -> Binned:
        edges = quantile_edges(values, n_bins)
        counts = bin_counts(values, edges)
        return cls(edges, tuple(float(c) for c in counts / counts.sum()))

    def bin_of(self, value: float) -> int:
        return int(np.searchsorted(np.asarray(self.edges), value, side="left"))

    def counts(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        return bin_counts(values, self.edges)

    def psi(self, values: Sequence[float] | np.ndarray) -> float | None:
        """PSI of `values` against this reference; None with no values."""
        c = self.counts(values)
        return psi(self.shares, c) if c.sum() else None

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "shares": list(self.shares)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Binned:
        return cls(tuple(float(x) for x in d["edges"]), tuple(float(x) for x in d["shares"]))


def bin_counts(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """How many values fall in each of the len(edges) + 1 bins."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)


def reason_category(reason: str) -> str:
    """The rule-hit category of a decision's reason: every `tag:<name>` counts as `tag`."""
    return "tag" if reason.startswith("tag:") else reason


@dataclass(frozen=True)
class Categorical:
    """Reference shares of categories (the deciding rule); unseen live categories count as PSI_FLOOR."""

    shares: Mapping[str, float]

    def psi(self, counts: Mapping[str, int]) -> float | None:
        if not sum(counts.values()):
            return None
        keys = sorted(set(self.shares) | set(counts))
        return psi([self.shares.get(k, 0.0) for k in keys], [counts.get(k, 0) for k in keys])

    def to_dict(self) -> dict[str, Any]:
        return {"shares": dict(self.shares)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Categorical:
        return cls({str(k): float(v) for k, v in dict(d["shares"]).items()})


def nearest_centroid_distance(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distance of each L2-normalised embedding to its nearest centroid (one matmul)."""
    e = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.maximum(norms, 1e-12)
    c = np.asarray(centroids, dtype=np.float32)
    d2 = 1.0 - 2.0 * (e @ c.T) + np.sum(c * c, axis=1)[None, :]
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0)).astype(np.float64)


@dataclass(frozen=True)
class EmbeddingSummary:
    """k centroids of the normalised training embeddings and the distance-to-nearest distribution."""

    centroids: np.ndarray  # (k, dim) float32
    distance: Binned
    far_radius: float  # FAR_QUANTILE of the reference distances
    far_share: float  # share of reference prompts beyond it (about 1 - FAR_QUANTILE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": int(self.centroids.shape[0]),
            "dim": int(self.centroids.shape[1]),
            "centroids": [[round(float(x), 7) for x in row] for row in self.centroids],
            "distance": self.distance.to_dict(),
            "far_radius": self.far_radius,
            "far_share": self.far_share,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmbeddingSummary:
        c = np.asarray(d["centroids"], dtype=np.float32)
        if c.ndim != 2 or c.shape != (int(d["k"]), int(d["dim"])) or not np.isfinite(c).all():
            raise ValueError(f"centroids must be a finite {d['k']} x {d['dim']} matrix, got shape {c.shape}")
        return cls(c, Binned.from_dict(d["distance"]), float(d["far_radius"]), float(d["far_share"]))


@dataclass(frozen=True)
class DriftReference:
    """What live traffic is compared with: the training data as the router saw it (`split` names the rows)."""

    n: int
    split: str
    threshold: float
    strong_share: float  # share of the split the router sends to the strong model (rules included)
    p_cheap_ok: Binned
    prompt_tokens: Binned
    reasons: Categorical
    embedding: EmbeddingSummary | None
    format_version: int = REFERENCE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "n": self.n,
            "split": self.split,
            "threshold": self.threshold,
            "strong_share": self.strong_share,
            "p_cheap_ok": self.p_cheap_ok.to_dict(),
            "prompt_tokens": self.prompt_tokens.to_dict(),
            "reasons": self.reasons.to_dict(),
            "embedding": self.embedding.to_dict() if self.embedding is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReference:
        version = d.get("format_version")
        if not isinstance(version, int) or version > REFERENCE_FORMAT or version < 1:
            raise DriftReferenceError(f"format_version {version!r} is not one this router-model reads (1..{REFERENCE_FORMAT})")
        part = "?"
        try:
            part = "p_cheap_ok"
            p = Binned.from_dict(d["p_cheap_ok"])
            part = "prompt_tokens"
            tokens = Binned.from_dict(d["prompt_tokens"])
            part = "reasons"
            reasons = Categorical.from_dict(d["reasons"])
            part = "embedding"
            emb = EmbeddingSummary.from_dict(d["embedding"]) if d.get("embedding") is not None else None
            part = "n/split/threshold/strong_share"
            return cls(int(d["n"]), str(d["split"]), float(d["threshold"]), float(d["strong_share"]), p, tokens, reasons, emb)
        except (KeyError, TypeError, ValueError) as e:
            raise DriftReferenceError(f"malformed field {part}: {e}") from e


def write_reference(model_dir: str | Path, reference: DriftReference) -> Path:
    """Write the reference into a (staged) model directory, before its metadata lists the files."""
    path = Path(model_dir) / REFERENCE_FILE
    path.write_text(json.dumps(reference.to_dict(), separators=(",", ":")), encoding="utf-8")
    return path


def read_reference(model_dir: str | Path, files: Mapping[str, str]) -> DriftReference:
    """The verified reference of a model directory whose metadata lists `files` (name -> sha256).

    NoReferenceError when the artifact has none (older than drift references): retrain it.
    """
    if REFERENCE_FILE not in files:
        raise NoReferenceError(
            f"the model in {model_dir} has no drift reference: it was trained before router-model recorded one. "
            "Retrain it (router-train) to compare live traffic with its training data."
        )
    path = verify_file(model_dir, REFERENCE_FILE, files[REFERENCE_FILE])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DriftReferenceError(f"not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise DriftReferenceError("must hold a JSON object")
    return DriftReference.from_dict(raw)
