"""Leak-free, stable splits: rows are grouped by normalized prompt and placed by a hash of it.

Hashing the group key (not shuffling rows) means a log that grows keeps every old row on the same
side of the split, and identical prompts (after normalization) can never straddle train and test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from router_model.prompt_digest import normalize_prompt

__all__ = ["SPLIT_NAMES", "assign_splits", "group_kfold", "holdout_mask", "normalize_prompt", "sample_groups"]

SPLIT_NAMES = ("train", "val", "test")


def _unit_hash(key: str, seed: int) -> float:
    """A stable uniform number in [0, 1) for a key: the first 8 bytes of sha256(seed + key)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(
    group_keys: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> np.ndarray:
    """"train"/"val"/"test" per row, decided by the hash of its group key only."""
    if len(fractions) != 3 or any((not math.isfinite(f)) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    edges = np.cumsum(fractions)[:2]
    cache: dict[str, str] = {}
    out = np.empty(len(group_keys), dtype="<U5")
    for i, key in enumerate(group_keys):
        name = cache.get(key)
        if name is None:
            u = _unit_hash(key, seed)
            name = SPLIT_NAMES[int(np.searchsorted(edges, u, side="right"))]
            cache[key] = name
        out[i] = name
    return out


def holdout_mask(group_keys: Sequence[str], share: float, seed: int = 0) -> np.ndarray:
    """True for the rows of a held-out set of about `share` of the groups (`router-label split`).

    Decided by a hash of the group key alone (salted apart from `assign_splits`, so training on the
    rest still gets a full train/val/test split): a group is wholly in or wholly out, and a log that
    grows keeps every old row on the same side.
    """
    if not (math.isfinite(share) and 0.0 < share < 1.0):
        raise ValueError(f"the held-out share must be in (0, 1), got {share!r}")
    cache: dict[str, bool] = {}
    out = np.zeros(len(group_keys), dtype=bool)
    for i, key in enumerate(group_keys):
        held = cache.get(key)
        if held is None:
            held = cache[key] = _unit_hash("holdout\x00" + key, seed) < share
        out[i] = held
    return out


def sample_groups(group_keys: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a deterministic spread sample of about `n` rows, whole groups at a time.

    Groups are taken in the order of a hash salted apart from the split's, so the sample does not
    lean toward one split; the last group may take it a little over `n`.
    """
    if n < 1:
        raise ValueError(f"the sample size must be >= 1, got {n}")
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(group_keys):
        rows_of.setdefault(key, []).append(i)
    keep: list[int] = []
    for key in sorted(rows_of, key=lambda k: _unit_hash(k, seed + 7919)):
        if len(keep) >= n:
            break
        keep.extend(rows_of[key])
    return np.array(sorted(keep), dtype=np.int64)


def group_kfold(group_keys: Sequence[str], k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, test_idx) folds with no group in two folds and fold sizes balanced by rows.

    Groups are visited in hash order (a deterministic shuffle) and each goes to the fold with the
    fewest rows so far (lowest fold index on ties).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(group_keys):
        rows_of.setdefault(key, []).append(i)
    if len(rows_of) < k:
        raise ValueError(f"need at least k={k} distinct groups, got {len(rows_of)}")
    order = sorted(rows_of, key=lambda g: (_unit_hash(g, seed), g))
    fold_of_row = np.empty(len(group_keys), dtype=np.int64)
    sizes = [0] * k
    for g in order:
        f = min(range(k), key=lambda j: (sizes[j], j))
        fold_of_row[rows_of[g]] = f
        sizes[f] += len(rows_of[g])
    idx = np.arange(len(group_keys))
    return [(idx[fold_of_row != f], idx[fold_of_row == f]) for f in range(k)]
