"""The drift reference of a new artifact: the training data as the router sees it.

`router-drift` and the serving gauges compare live traffic with it (router_model/observe/drift.py
owns the schema and the statistics). Computed from what training already has (embeddings, the
head's p_cheap_ok, token counts, requests), so it costs one k-means.

The centroids are fitted on the training split; the distributions are taken on the rows the fit
never saw (validation + test). On the training split itself both are in-sample: distances to
centroids fitted on the same points are shorter than for any new prompt, and the head's
p_cheap_ok can be sharper on its own training rows. With a training-split reference, 200 unseen
MMLU prompts against a router trained on 600 MMLU rows came out as drift (exit 3); against
the held-out reference every PSI is under 0.1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from router_model.decision import RoutingRules
from router_model.drift_reference import (
    FAR_QUANTILE,
    Binned,
    Categorical,
    DriftReference,
    EmbeddingSummary,
    nearest_centroid_distance,
    reason_category,
)
from router_model.request import Request, parse_request
from router_model.router import rule_for

N_CENTROIDS = 16
N_BINS = 10


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def embedding_summary(
    fit_embeddings: np.ndarray, embeddings: np.ndarray, *, k: int = N_CENTROIDS, seed: int = 0
) -> EmbeddingSummary:
    """k-means centroids of the L2-normalised `fit_embeddings`, and the distance-to-nearest
    distribution (and far radius) of `embeddings`, rows the centroids were not fitted on."""
    from sklearn.cluster import KMeans

    fit = _normalised(fit_embeddings)
    k = max(1, min(k, len(fit) // 10 or 1))  # at least ~10 prompts per centroid
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
    centroids = km.cluster_centers_.astype(np.float32)
    dist = nearest_centroid_distance(_normalised(embeddings), centroids)
    radius = float(np.quantile(dist, FAR_QUANTILE))
    return EmbeddingSummary(centroids, Binned.of(dist, N_BINS), radius, float(np.mean(dist > radius)))


def build_reference(
    requests: Sequence[Request],
    tags: Sequence[Sequence[str]],
    n_tokens: np.ndarray,
    *,
    p_cheap_ok: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    fit_embeddings: np.ndarray,
    split: str = "validation+test",
    rules: RoutingRules | None = None,
    seed: int = 0,
) -> DriftReference:
    """The reference over held-out rows (aligned across the first five arguments), with centroids
    fitted on `fit_embeddings` (the training split).

    Rules are the serving defaults (`RoutingRules()`); a rule decision sends the row to the strong
    model whatever p_cheap_ok is, as the router would.
    """
    n = len(requests)
    if not (len(tags) == len(n_tokens) == len(p_cheap_ok) == len(embeddings) == n) or n == 0:
        raise ValueError("the reference needs a non-empty split with one tag list, count, probability and embedding per row")
    rules = rules or RoutingRules()
    reasons = []
    for req, row_tags, count in zip(requests, tags, n_tokens):
        rule = rule_for(rules, parse_request(req), tuple(t.strip().lower() for t in row_tags), int(count))
        reasons.append(reason_category(rule) if rule else "classifier")
    classified = np.array([r == "classifier" for r in reasons])
    p = np.asarray(p_cheap_ok, dtype=np.float64)
    strong = ~classified | (p < threshold)
    counts = Counter(reasons)
    return DriftReference(
        n=n,
        split=split,
        threshold=float(threshold),
        strong_share=float(strong.mean()),
        p_cheap_ok=Binned.of(p[classified] if classified.any() else p, N_BINS),
        prompt_tokens=Binned.of(np.asarray(n_tokens, dtype=np.float64), N_BINS),
        reasons=Categorical({k: v / n for k, v in sorted(counts.items())}),
        embedding=embedding_summary(fit_embeddings, embeddings, seed=seed),
    )
