"""One calibrated head per model on one shared embedding, with missing outcomes masked.

Two heads per model, both sigmoid-calibrated logistic regressions (cross-fitted, as the
two-model heads are):

* `pass`: P(model m passes the request), fitted on the rows that have m's outcome;
* `ok`:   P(m loses nothing against every pricier model) = P(m passes, or no pricier model
  passes). This is what the two-model router's p_cheap_ok is for a pair, and it is how a
  model's probability accounts for how much better the more expensive models are on this
  request: a hard request that every model fails is "ok" for the cheapest one. A row's label
  is masked when it cannot be known (m failed, no known pricier model passed, some pricier
  outcome missing). The priciest model is always ok (constant 1).

Every head is a set of linear folds `mean_k sigmoid(-(a_k (x.w_k + c_k) + b_k))`: exactly what
sklearn computes, and what `training/multi/artifact.py` writes into the ONNX graph as one
MatMul, so all heads run in one graph run per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from router_model.offline import metrics as M
from training.head import calibration_folds

DEFAULT_C = (0.1, 1.0)  # per head, by validation log-loss; a short grid keeps 2N heads affordable on 2 cores
KINDS = ("pass", "ok")
CV_FOLDS = 3  # cross-fitted calibration folds per head (the pair head uses 5; N-model training fits 2N heads)
# A head whose training labels are all one class is a constant: sigmoid(-b) with b = -logit(rate).
_MAX_LOGIT = 12.0


@dataclass(frozen=True)
class LinearHead:
    """One head as linear folds: p = mean_k sigmoid(-(a_k * (x @ w_k + c_k) + b_k))."""

    w: np.ndarray  # (K, D)
    c: np.ndarray  # (K,)
    a: np.ndarray  # (K,)
    b: np.ndarray  # (K,)
    name: str = ""

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = X.astype(np.float64) @ self.w.T + self.c
        return (1.0 / (1.0 + np.exp(self.a * z + self.b))).mean(axis=1)

    @classmethod
    def constant(cls, p: float, dim: int, name: str = "") -> LinearHead:
        p = float(np.clip(p, 1e-5, 1 - 1e-5))
        logit = float(np.clip(np.log(p / (1 - p)), -_MAX_LOGIT, _MAX_LOGIT))
        return cls(np.zeros((1, dim)), np.zeros(1), np.zeros(1), np.array([-logit]), name)


def _from_calibrated(model, name: str) -> LinearHead:
    """Folds of a fitted CalibratedClassifierCV(LogisticRegression, method='sigmoid')."""
    ws, cs, as_, bs = [], [], [], []
    for cc in model.calibrated_classifiers_:
        est, cal = cc.estimator, cc.calibrators[0]
        ws.append(np.asarray(est.coef_, dtype=np.float64).ravel())
        cs.append(float(est.intercept_[0]))
        as_.append(float(cal.a_))
        bs.append(float(cal.b_))
    return LinearHead(np.vstack(ws), np.array(cs), np.array(as_), np.array(bs), name)


def ok_labels(passed: np.ndarray) -> np.ndarray:
    """(n, N) "m loses nothing against every pricier model", NaN where unknowable (columns cheapest first)."""
    n, N = passed.shape
    out = np.full((n, N), np.nan)
    for j in range(N):
        mine = passed[:, j]
        pricier = passed[:, j + 1:]
        any_pass = np.nan_to_num(pricier, nan=0.0).max(axis=1, initial=0.0) >= 0.5
        all_known = ~np.isnan(pricier).any(axis=1)
        lab = np.where(mine >= 0.5, 1.0, np.where(any_pass, 0.0, np.where(all_known, 1.0, np.nan)))
        out[:, j] = np.where(np.isnan(mine), np.nan, lab)
    return out


@dataclass(frozen=True)
class PassHeads:
    """The fitted heads of N models (columns cheapest first) and what validation said of each."""

    models: tuple[str, ...]
    pass_heads: tuple[LinearHead, ...]
    ok_heads: tuple[LinearHead, ...]
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    def p_pass(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([h.predict(X) for h in self.pass_heads])

    def p_ok(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([h.predict(X) for h in self.ok_heads])

    def heads(self) -> list[LinearHead]:
        """All heads in graph column order: pass heads, then ok heads."""
        return [*self.pass_heads, *self.ok_heads]


def _fit_one(X: np.ndarray, y: np.ndarray, *, tr: np.ndarray, va: np.ndarray, c_values: Sequence[float], seed: int,
             name: str) -> tuple[LinearHead, dict[str, float]]:
    """Fit one masked head for each C on training rows; keep the best validation log-loss."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    dim = X.shape[1]
    tr = tr[~np.isnan(y[tr])]
    va = va[~np.isnan(y[va])]
    yt = y[tr].astype(int)
    counts = np.bincount(yt, minlength=2) if len(yt) else np.zeros(2, int)
    if counts.min() < 2:
        rate = (counts[1] + 0.5) / (counts.sum() + 1.0)
        return LinearHead.constant(rate, dim, name), {"C": float("nan"), "val_logloss": float("nan"), "n_train": float(len(tr)), "constant": 1.0}
    folds = max(2, min(CV_FOLDS, int(counts.min())))
    best: tuple[float, LinearHead, float] | None = None
    for c in c_values:
        model = CalibratedClassifierCV(LogisticRegression(C=c, max_iter=2000), method="sigmoid",
                                       cv=calibration_folds(folds, seed))
        model.fit(X[tr], yt)
        head = _from_calibrated(model, name)
        if len(va) == 0:
            loss = 0.0
        else:
            p = np.clip(head.predict(X[va]), 1e-6, 1 - 1e-6)
            yv = y[va]
            loss = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
        if best is None or loss < best[0]:
            best = (loss, head, c)
        if len(c_values) > 1 and len(va) == 0:
            break
    assert best is not None
    return best[1], {"C": float(best[2]), "val_logloss": best[0], "n_train": float(len(tr)), "constant": 0.0}


def fit_heads(
    X: np.ndarray,
    passed: np.ndarray,
    models: Sequence[str],
    *,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    c_values: Sequence[float] = DEFAULT_C,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> PassHeads:
    """A pass head and an ok head per model (the priciest model's ok head is the constant 1)."""
    if passed.shape != (len(X), len(models)):
        raise ValueError(f"outcomes of shape {passed.shape} for {len(X)} rows and {len(models)} models")
    ok = ok_labels(passed)
    dim = X.shape[1]
    pass_heads, ok_heads, val = [], [], {}
    for j, m in enumerate(models):
        t0 = time.perf_counter()
        h, info = _fit_one(X, passed[:, j], tr=train_rows, va=val_rows, c_values=c_values, seed=seed, name=f"pass:{m}")
        pass_heads.append(h)
        val[f"pass:{m}"] = info
        if j == len(models) - 1:
            ok_heads.append(LinearHead.constant(1.0, dim, f"ok:{m}"))
        else:
            h2, info2 = _fit_one(X, ok[:, j], tr=train_rows, va=val_rows, c_values=c_values, seed=seed, name=f"ok:{m}")
            ok_heads.append(h2)
            val[f"ok:{m}"] = info2
        say(f"  {m:<40} pass C={info['C']:<5g} val logloss {info['val_logloss']:.4f}  "
            f"(n={int(info['n_train'])}, {time.perf_counter() - t0:.1f}s)")
    return PassHeads(tuple(models), tuple(pass_heads), tuple(ok_heads), val)


def ece_per_model(p_pass: np.ndarray, passed: np.ndarray, models: Sequence[str], *,
                  n_bins: int = 15) -> dict[str, dict[str, float]]:
    """ECE (15 equal-width bins) and Brier of each model's P(pass), on the rows that have its outcome."""
    out = {}
    for j, m in enumerate(models):
        keep = ~np.isnan(passed[:, j])
        if keep.sum() == 0:
            continue
        out[m] = {
            "ece": M.ece(p_pass[keep, j], passed[keep, j], n_bins=n_bins),
            "brier": M.brier(p_pass[keep, j], passed[keep, j]),
            "n": float(keep.sum()),
            "pass_rate": float(passed[keep, j].mean()),
            "mean_p": float(p_pass[keep, j].mean()),
        }
    return out
