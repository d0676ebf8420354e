"""Drift: does live traffic still look like the data the router was trained on?

At training time the artifact gets `drift_reference.json` (training/artifact/reference.py):
the distribution of p_cheap_ok, prompt tokens and the deciding rule, the share routed to the
strong model, and a compact summary of the embeddings (k centroids of the normalised training
embeddings, the distribution of the distance to the nearest one and a "far" radius at its 99th
percentile). Centroids are fitted on the training split, distributions taken on the held-out
rows (validation + test), where neither the head nor the centroids are in-sample. The router computes each request's distance to the nearest centroid
from the embedding its one graph run already produces, and the decision log records it.

This module owns the statistics (PSI with the usual 0.1 / 0.25 bands, share checks), the
reference's schema, the comparison `router-drift` prints, and the rolling window the service
and the gateway export as gauges. numpy only: it runs on the serving path.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i) over bins, with e the reference shares, a the live
shares, and an empty bin given PSI_FLOOR so the logarithm stays finite.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_model.drift_reference import (  # noqa: F401 - the reference's names, re-exported for callers of this module
    DRIFT,
    FAR_QUANTILE,
    MODERATE,
    NO_DATA,
    PSI_DRIFT,
    PSI_FLOOR,
    PSI_MODERATE,
    REFERENCE_FILE,
    REFERENCE_FORMAT,
    ROLLING_WINDOW,
    SHARE_SIGMAS,
    STABLE,
    Binned,
    Categorical,
    DriftReference,
    DriftReferenceError,
    EmbeddingSummary,
    NoReferenceError,
    bin_counts,
    nearest_centroid_distance,
    psi,
    psi_band,
    quantile_edges,
    read_reference,
    reason_category,
    write_reference,
)

# ------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class QuantityDrift:
    """PSI of one quantity over the live records that carry it."""

    name: str
    n: int
    psi: float | None
    band: str


@dataclass(frozen=True)
class ShareCheck:
    """An observed share against the reference's, flagged beyond tolerance and SHARE_SIGMAS errors."""

    name: str
    n: int
    expected: float
    observed: float | None
    tolerance: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    n_records: int
    quantities: tuple[QuantityDrift, ...]
    shares: tuple[ShareCheck, ...]

    @property
    def status(self) -> str:
        """drift if any PSI is in the drift band or a share is off; moderate if any PSI is; else stable."""
        bands = {q.band for q in self.quantities}
        if DRIFT in bands or any(s.drifted for s in self.shares):
            return DRIFT
        return MODERATE if MODERATE in bands else STABLE

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "n_records": self.n_records,
            "quantities": [q.__dict__ for q in self.quantities],
            "shares": [s.__dict__ for s in self.shares],
        }


def share_check(name: str, expected: float, hits: int, n: int, tolerance: float, *, one_sided: bool = False) -> ShareCheck:
    """Is hits/n off `expected` by more than `tolerance` and SHARE_SIGMAS binomial standard errors?"""
    if n == 0:
        return ShareCheck(name, 0, expected, None, tolerance, False)
    observed = hits / n
    diff = observed - expected if one_sided else abs(observed - expected)
    se = math.sqrt(max(expected * (1 - expected), 1e-6) / n)
    return ShareCheck(name, n, expected, observed, tolerance, diff > max(tolerance, SHARE_SIGMAS * se))


def compare(
    reference: DriftReference,
    records: Iterable[Mapping[str, Any]],
    *,
    strong_tolerance: float = 0.10,
    far_tolerance: float = 0.05,
) -> DriftReport:
    """Compare decision-log records with the reference: PSI per quantity and the two share checks."""
    p: list[float] = []
    tokens: list[int] = []
    dist: list[float] = []
    reasons: Counter[str] = Counter()
    strong = 0
    n = 0
    for r in records:
        n += 1
        tokens.append(int(r["prompt_tokens"]))
        reasons[reason_category(str(r["reason"]))] += 1
        strong += r["model"] == r["strong_model"]
        if r.get("p_cheap_ok") is not None:
            p.append(float(r["p_cheap_ok"]))
        if r.get("centroid_distance") is not None:
            dist.append(float(r["centroid_distance"]))

    def q(name: str, ref: Binned | Categorical | None, values: Any, count: int) -> QuantityDrift:
        value = ref.psi(values) if ref is not None and count else None
        return QuantityDrift(name, count, value, psi_band(value))

    emb = reference.embedding
    quantities = (
        q("p_cheap_ok", reference.p_cheap_ok, p, len(p)),
        q("prompt_tokens", reference.prompt_tokens, tokens, len(tokens)),
        q("rule_hits", reference.reasons, reasons, n),
        q("centroid_distance", emb.distance if emb else None, dist, len(dist)),
    )
    far = sum(d > emb.far_radius for d in dist) if emb else 0
    shares = (
        share_check("strong_share", reference.strong_share, strong, n, strong_tolerance),
        share_check("far_share", emb.far_share if emb else 0.0, far, len(dist) if emb else 0, far_tolerance, one_sided=True),
    )
    return DriftReport(n, quantities, shares)


# ------------------------------------------------------------------------------ rolling window (serving)


@dataclass(frozen=True)
class RollingSnapshot:
    """The gauges' values: NaN where the window holds nothing to measure."""

    decisions: int
    psi_p_cheap_ok: float
    strong_share: float
    expected_strong_share: float
    far_share: float
    expected_far_share: float


class RollingDrift:
    """The last `size` decisions of the serving router, kept as bin indices (O(1) per decision).

    A new reference (the router was reloaded) starts a new window: the old decisions belong to
    another model. Thread-safe.
    """

    def __init__(self, size: int = ROLLING_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self._size = size
        self._lock = threading.Lock()
        self._reference: DriftReference | None = None
        self._items: deque[tuple[int, bool, int]] = deque()  # (p bin or -1, strong, far: 1/0, -1 unknown)
        self._p_counts = np.zeros(1)
        self._strong = 0
        self._far = [0, 0]  # [known, far]

    def _reset(self, reference: DriftReference | None) -> None:
        self._reference = reference
        self._items.clear()
        self._p_counts = np.zeros(len(reference.p_cheap_ok.shares) if reference else 1)
        self._strong = 0
        self._far = [0, 0]

    def observe(self, reference: DriftReference | None, strong_model: str, decisions: Iterable[Any]) -> None:
        """Add RoutingDecisions of the router whose reference is `reference` (None: nothing kept)."""
        with self._lock:
            if reference is not self._reference:
                self._reset(reference)
            if reference is None:
                return
            emb = reference.embedding
            for d in decisions:
                b = reference.p_cheap_ok.bin_of(d.p_cheap_ok) if d.p_cheap_ok is not None else -1
                dist = getattr(d, "centroid_distance", None)
                far = -1 if dist is None or emb is None else int(dist > emb.far_radius)
                self._push((b, d.model == strong_model, far))

    def _push(self, item: tuple[int, bool, int]) -> None:
        self._items.append(item)
        self._count(item, 1)
        if len(self._items) > self._size:
            self._count(self._items.popleft(), -1)

    def _count(self, item: tuple[int, bool, int], sign: int) -> None:
        b, strong, far = item
        if b >= 0:
            self._p_counts[b] += sign
        self._strong += sign * strong
        if far >= 0:
            self._far[0] += sign
            self._far[1] += sign * far

    def snapshot(self) -> RollingSnapshot:
        nan = float("nan")
        with self._lock:
            ref, n = self._reference, len(self._items)
            if ref is None:
                return RollingSnapshot(0, nan, nan, nan, nan, nan)
            counts = self._p_counts.copy()
            strong, (known, far) = self._strong, self._far
        emb = ref.embedding
        return RollingSnapshot(
            decisions=n,
            psi_p_cheap_ok=psi(ref.p_cheap_ok.shares, counts) if counts.sum() > 0 else nan,
            strong_share=strong / n if n else nan,
            expected_strong_share=ref.strong_share,
            far_share=far / known if known else nan,
            expected_far_share=emb.far_share if emb else nan,
        )


# (name suffix, help) of the gauges; the service prefixes `router_drift_`, the gateway `router_gateway_drift_`.
GAUGES: tuple[tuple[str, str], ...] = (
    ("decisions", f"Decisions in the rolling drift window (the last {ROLLING_WINDOW})."),
    ("psi_p_cheap_ok", "PSI of p_cheap_ok in the window against the training data (0.1 moderate, 0.25 drift)."),
    ("strong_share", "Share of the window's decisions routed to the strong model."),
    ("expected_strong_share", "Share of the reference rows the router routes to the strong model."),
    ("far_share", "Share of the window's prompts farther from every training centroid than the far radius."),
    ("expected_far_share", "Share of the reference rows beyond the far radius (about 0.01)."),
)


def gauge_values(snapshot: RollingSnapshot) -> list[tuple[str, str, float]]:
    """(name suffix, help, value) for each gauge of GAUGES."""
    return [(name, text, float(getattr(snapshot, name))) for name, text in GAUGES]
