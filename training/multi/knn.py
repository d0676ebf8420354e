"""A measured alternative to the per-model logistic heads: kNN over the shared embedding, and an LR/kNN blend.

P(m passes | x) = (sum_i w_i y_im + a * rate_m) / (sum_i w_i + a) over the k training prompts
most similar to x by cosine similarity, w_i = exp((s_i - s_max) / T) (T = inf: equal weights),
rows without m's outcome left out, a = pseudo-count of the prior rate_m (m's training pass rate).
The ok heads are the same on the ok labels (`ok_labels`). k, T and a are chosen by validation
log-loss; the blend weight too. `benchmarks/multi_model.py` reports both beside the shipped
heads; neither is served (issue 16: on routerbench and mmlu-pro they tie the logistic heads
within noise, the kNN alone is worse).

In ONNX this would be: normalise the embedding, MatMul with the stored normalised training
embeddings (D, n), TopK(k), Gather of the label and known-mask matrices, weighted sums, Div.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.multi.heads import PassHeads, ok_labels

K_GRID = (10, 20, 40, 80, 160)
T_GRID = (0.03, 0.1, float("inf"))
A_GRID = (0.5, 2.0, 5.0)
W_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _unit(E: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(n > 0, n, 1.0)


def knn_mean(Uq: np.ndarray, Um: np.ndarray, Ym: np.ndarray, *, prior: np.ndarray, k: int, temperature: float,
             alpha: float) -> np.ndarray:
    """(n, N) similarity-weighted mean of Ym (NaN = unknown) over each query's k nearest rows, shrunk to prior."""
    S = Uq @ Um.T
    k = max(1, min(int(k), Um.shape[0]))
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    s = np.take_along_axis(S, idx, axis=1)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / temperature) if np.isfinite(temperature) else np.ones_like(s)
    Yk = Ym[idx]  # (n, k, N)
    num = (w[:, :, None] * np.nan_to_num(Yk)).sum(axis=1) + alpha * prior
    den = (w[:, :, None] * ~np.isnan(Yk)).sum(axis=1) + alpha
    return num / den


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    keep = ~np.isnan(y)
    if not keep.any():
        return 0.0
    q = np.clip(p[keep], 1e-6, 1 - 1e-6)
    t = y[keep]
    return float(-np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))


def _rate(Y: np.ndarray) -> np.ndarray:
    known = (~np.isnan(Y)).sum(axis=0)
    return (np.nan_to_num(Y).sum(axis=0) + 0.5) / (known + 1.0)


@dataclass(frozen=True)
class KnnHeads:
    """Per-model kNN pass and ok probabilities from stored unit embeddings (the first `dim` inputs)."""

    models: tuple[str, ...]
    memory: np.ndarray  # (n, dim) unit embeddings of the training rows
    passed: np.ndarray  # (n, N) their outcomes, NaN unknown
    ok: np.ndarray  # (n, N) their ok labels, NaN unknown
    k: int
    temperature: float
    alpha: float
    validation: dict[str, float]

    def _q(self, X: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(X, dtype=np.float64)[:, : self.memory.shape[1]])

    def p_pass(self, X: np.ndarray) -> np.ndarray:
        return knn_mean(self._q(X), self.memory, self.passed, prior=_rate(self.passed), k=self.k,
                        temperature=self.temperature, alpha=self.alpha)

    def p_ok(self, X: np.ndarray) -> np.ndarray:
        p = knn_mean(self._q(X), self.memory, self.ok, prior=_rate(self.ok), k=self.k, temperature=self.temperature,
                     alpha=self.alpha)
        p[:, -1] = 1.0  # the priciest model loses nothing against a pricier one
        return p


def fit_knn_heads(X: np.ndarray, passed: np.ndarray, models: Sequence[str], *, train_rows: np.ndarray,
                  val_rows: np.ndarray, dim: int) -> KnnHeads:
    """k, T and a by validation log-loss (pass + ok heads, all models); memory = the training rows."""
    ok = ok_labels(passed)
    U = _unit(np.asarray(X, dtype=np.float64)[:, :dim])
    Um, Uv = U[train_rows], U[val_rows]
    yp, yo = passed[train_rows], ok[train_rows]
    best: tuple[float, int, float, float] | None = None
    for k, t, a in itertools.product(K_GRID, T_GRID, A_GRID):
        loss = (_logloss(knn_mean(Uv, Um, yp, prior=_rate(yp), k=k, temperature=t, alpha=a), passed[val_rows])
                + _logloss(knn_mean(Uv, Um, yo, prior=_rate(yo), k=k, temperature=t, alpha=a)[:, :-1], ok[val_rows][:, :-1]))
        if best is None or loss < best[0]:
            best = (loss, k, t, a)
    assert best is not None
    loss, k, t, a = best
    return KnnHeads(tuple(models), Um, yp, yo, k, t, a,
                    {"k": float(k), "temperature": t, "alpha": a, "val_logloss_pass_plus_ok": loss})


@dataclass(frozen=True)
class BlendHeads:
    """w * logistic heads + (1 - w) * kNN heads, per probability."""

    lr: PassHeads
    knn: KnnHeads
    w: float

    def p_pass(self, X: np.ndarray) -> np.ndarray:
        return self.w * self.lr.p_pass(X) + (1 - self.w) * self.knn.p_pass(X)

    def p_ok(self, X: np.ndarray) -> np.ndarray:
        return self.w * self.lr.p_ok(X) + (1 - self.w) * self.knn.p_ok(X)


def fit_blend(lr: PassHeads, knn: KnnHeads, X: np.ndarray, *, passed: np.ndarray, val_rows: np.ndarray,
              weights: Sequence[float] = W_GRID) -> BlendHeads:
    """The LR weight with the lowest validation log-loss (pass + ok heads)."""
    ok = ok_labels(passed)[val_rows]
    y = passed[val_rows]
    Xv = X[val_rows]
    lp, lo, kp, ko = lr.p_pass(Xv), lr.p_ok(Xv), knn.p_pass(Xv), knn.p_ok(Xv)
    losses = {float(w): _logloss(w * lp + (1 - w) * kp, y) + _logloss((w * lo + (1 - w) * ko)[:, :-1], ok[:, :-1])
              for w in weights}
    return BlendHeads(lr, knn, min(losses, key=lambda w: losses[w]))
