"""GPTQ's blocked update (training/artifact/gptq.py) rounds exactly as the row-by-row algorithm does."""

from __future__ import annotations

import numpy as np
import pytest

from training.artifact.gptq import gptq_round


def _row_by_row(w: np.ndarray, scale: np.ndarray, h: np.ndarray, damping: float = 0.01) -> np.ndarray:
    """The textbook GPTQ loop: round row i, push its error onto every later row with one outer product."""
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[order], h[order][:, order]
    h += damping * float(np.mean(np.diag(h))) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, dtype=np.int8)
    for i in range(len(w)):
        qi = np.clip(np.round(w[i] / scale), -127, 127)
        q[i] = qi
        w[i + 1:] -= np.outer(u[i, i + 1:], (w[i] - qi * scale) / u[i, i])
    out = np.empty_like(q)
    out[order] = q
    return out


@pytest.mark.parametrize(("k", "n", "block"), [(96, 40, 64), (130, 24, 32), (50, 50, 1), (64, 16, 200)])
def test_blocked_update_equals_row_by_row(k: int, n: int, block: int) -> None:
    rng = np.random.default_rng(k + n)
    x = rng.normal(size=(2000, k)) @ rng.normal(size=(k, k)) * 0.1  # correlated inputs: GPTQ's errors move
    x[:, 3] = 0.0  # a dead channel
    h = x.T @ x / len(x)
    w = rng.normal(size=(k, n)) * 0.05
    scale = np.abs(w).max(axis=0) / 127
    got = gptq_round(w, scale, h, block=block)
    assert got.dtype == np.int8 and got.shape == (k, n)
    np.testing.assert_array_equal(got, _row_by_row(w, scale, h))
    assert not np.array_equal(got, np.clip(np.round(w / scale), -127, 127).astype(np.int8))  # not plain rounding
