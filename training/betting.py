"""The betting test of one bounded mean, and fixed sequences of them (docs/guarantee.md).

Waudby-Smith & Ramdas (2023): a test per hypothesis "E[Z] > 0" whose e-value is the wealth of a
gambler betting against it; training/risk.py turns it into the floor and budget certificates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B.
# One test per hypothesis of the mean of one bounded per-row quantity Z (Z <= hi):
#     H0: E[Z] > 0 (the goal fails)   rejected when the e-value below reaches 1 / delta.
# A gambler starts with wealth 1 and before row i stakes lambda_i in [0, c / hi) (chosen from rows
# 1..i-1 only) on "Z is negative": K_i = K_{i-1} (1 - lambda_i Z_i). Under H0 each factor has
# conditional mean 1 - lambda_i E[Z] <= 1 and is > 0 (lambda_i Z_i <= c < 1), so K is a nonnegative
# supermartingale with K_0 = 1 and E[K_n] <= 1. The rows are read in a seeded random order; the
# e-value is the mean of K_n over a few such orders (a mean of e-values is an e-value), and Markov's
# inequality gives P(e >= 1 / delta) <= delta under H0 (docs/guarantee.md).

BET_CAP = 0.5  # c: the stake never exceeds c / hi, so one row can at most halve the wealth
PERMUTATIONS = 1  # row orders (1: the running maximum, Ville; more: the mean of the final wealths, Markov;
# measured on routellm-mmlu, 4 or 16 orders changed the cheap share by 0.1 point: one order is the default)
SEED = 20231  # the row orders are fixed by this seed: the same log certifies the same threshold
_CHUNK = 48  # hypotheses tested at once along a sequence (the sequence stops at the first failure)



def _orders(n: int, permutations: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n])
    return np.stack([rng.permutation(n) for _ in range(max(1, permutations))])


def betting_log_evalue(Z: np.ndarray, hi: np.ndarray | float, delta: float, *, lo: np.ndarray | float = -1.0,
                       permutations: int = PERMUTATIONS, seed: int = SEED,
                       orders: np.ndarray | None = None) -> np.ndarray:
    """log of the betting e-value against H0: E[Z] > 0, one per row of Z ((m, n): m hypotheses, n rows).

    Every Z of row k must lie in [lo_k, hi_k] with hi_k > 0 (lo only scales the variance prior).
    Bets (predictable plug-in, tuned for a fixed n): lambda_i = min(BET_CAP / hi, sqrt(2 log(1/delta)
    / (n * v_i))), v_i the variance of the rows before i with a prior pseudo-row of variance
    (hi - lo)^2 / 4: v_i = (prior + sum z^2 - (sum z)^2 / k) / (k + 1), k = i - 1 rows.
    Reject H0 when the result is >= log(1 / delta).
    """
    Z = np.atleast_2d(np.asarray(Z, dtype=float))
    m, n = Z.shape
    if n == 0:
        return np.zeros(m)
    hi_ = np.broadcast_to(np.asarray(hi, dtype=float), (m,))[:, None]
    lo_ = np.broadcast_to(np.asarray(lo, dtype=float), (m,))[:, None]
    if np.any(hi_ <= 0):
        raise ValueError("betting test: hi must be > 0 (otherwise E[Z] <= 0 holds trivially)")
    if np.any(hi_ + 1e-12 < Z) or np.any(lo_ - 1e-12 > Z):
        raise ValueError("betting test: a Z lies outside [lo, hi]")
    log_inv = math.log(1.0 / delta)
    cap = BET_CAP / hi_
    prior_var = (hi_ - lo_) ** 2 / 4.0
    orders = _orders(n, permutations, seed) if orders is None else orders
    logs = []
    for order in orders:
        X = Z[:, order]
        lam = _bets(_shift(np.cumsum(X, axis=1)), _shift(np.cumsum(X * X, axis=1)), np.arange(n, dtype=float),
                    prior_var=prior_var, cap=cap, n=n, log_inv=log_inv)
        path = np.cumsum(np.log1p(-lam * X), axis=1)
        # One order: the running maximum (Ville's inequality covers the whole path). Several: the
        # final wealths, averaged (Markov's inequality covers the mean of e-values).
        logs.append(path.max(axis=1) if len(orders) == 1 else path[:, -1])
    L = np.stack(logs)  # (permutations, m)
    top = L.max(axis=0)
    return np.asarray(top + np.log(np.exp(L - top).mean(axis=0)), dtype=float)



def _shift(a: np.ndarray) -> np.ndarray:
    """The running totals before each step: a column of zeros, then all but the last column."""
    return np.concatenate([np.zeros(a.shape[:-1] + (1,)), a[..., :-1]], axis=-1)


def _bets(sum_z: np.ndarray, sum_z2: np.ndarray, k: np.ndarray, *, prior_var: np.ndarray | float,
          cap: np.ndarray | float, n: int, log_inv: float) -> np.ndarray:
    """The stakes from the k rows seen so far (their sum and sum of squares): the tuned bet, capped."""
    var = (prior_var + np.maximum(sum_z2 - sum_z**2 / np.maximum(k, 1.0), 0.0)) / (k + 1.0)
    return np.minimum(cap, np.sqrt(2.0 * log_inv / (n * np.maximum(var, 1e-12))))


def betting_floor_log_evalues(rank: np.ndarray, loss: np.ndarray, gain: np.ndarray, s: np.ndarray,
                              m: np.ndarray, *, floor: float | np.ndarray, risk: float, seed: int = SEED,
                              max_blocks: int = 1024) -> np.ndarray:
    """The betting test of the pair's floor for many routings at once (routing k: the rows with
    rank < m[k] go cheap), in O(blocks x routings) from counts.

    Z takes four values per row: F (a loss routed cheap), -(1 - F) (the strong model passes and
    nothing is lost), -1 (a gain routed cheap), 0 (else), so a block of rows contributes
    n_F log(1 - lambda F) + n_s log(1 + lambda (1 - F)) + n_g log(1 + lambda). The rows are read in
    one seeded order and cut into at most `max_blocks` blocks; the stake is fixed within a block
    (chosen from the rows before it, so still predictable) and the wealth is read at block ends
    (Ville's inequality over those times). With one row per block this is `betting_log_evalue`.
    """
    n = len(rank)
    M = len(m)
    if n == 0:
        return np.zeros(M)
    F = np.broadcast_to(np.asarray(floor, dtype=float), (M,))[None, :]  # one floor per routing, or one for all
    blk, nb = _block_layout(n, seed, max_blocks)
    mm = np.asarray(m, dtype=np.int64)

    def counts(mask: np.ndarray) -> np.ndarray:  # (nb, M): rows of each block in `mask` with rank < m
        key = np.sort(blk[mask] * (n + 1) + rank[mask])
        base = np.arange(nb, dtype=np.int64) * (n + 1)
        return (np.searchsorted(key, base[:, None] + mm[None, :]) - np.searchsorted(key, base)[:, None]).astype(float)

    lc, gc = counts(loss > 0.5), counts(gain > 0.5)
    sb = np.bincount(blk, weights=(s > 0.5).astype(float), minlength=nb)[:, None]
    rows = np.bincount(blk, minlength=nb).astype(float)
    sum_z = F * lc - (1.0 - F) * (sb - lc) - gc
    sum_z2 = F * F * lc + (1.0 - F) ** 2 * (sb - lc) + gc
    k = _shift(np.cumsum(rows))[:, None]
    hi = np.maximum(F, 1e-9)
    lam = _bets(_shift(np.cumsum(sum_z, axis=0).T).T, _shift(np.cumsum(sum_z2, axis=0).T).T, k,
                prior_var=(hi + 1.0) ** 2 / 4.0, cap=BET_CAP / hi, n=n, log_inv=math.log(1.0 / risk))
    block_log = lc * np.log1p(-lam * F) + (sb - lc) * np.log1p(lam * (1.0 - F)) + gc * np.log1p(lam)
    return np.asarray(np.cumsum(block_log, axis=0).max(axis=0), dtype=float)



def _block_layout(n: int, seed: int, max_blocks: int) -> tuple[np.ndarray, int]:
    """Each row's block in the seeded betting order (at most max_blocks blocks of equal size)."""
    size = max(1, -(-n // max_blocks))
    order = _orders(n, 1, seed)[0]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    blk = pos // size
    return blk, int(blk.max()) + 1


def _block_sums(blk: np.ndarray, nb: int, rank: np.ndarray, m: np.ndarray, values: list[np.ndarray]) -> list[np.ndarray]:
    """(nb, M) per value array: its sum over the rows of each block with rank < m[k]."""
    n = len(rank)
    key = blk * (n + 1) + rank
    order = np.argsort(key, kind="stable")
    key = key[order]
    base = np.arange(nb, dtype=np.int64) * (n + 1)
    hi = np.searchsorted(key, base[:, None] + np.asarray(m, dtype=np.int64)[None, :])
    lo = np.searchsorted(key, base)[:, None]
    out = []
    for v in values:
        cum = np.concatenate([[0.0], np.cumsum(np.asarray(v, dtype=float)[order])])
        out.append(cum[hi] - cum[lo])
    return out


def betting_budget_log_evalues(rank: np.ndarray, spend_cheap: np.ndarray, spend_strong: np.ndarray, m: np.ndarray,
                               *, budget: float | np.ndarray, cap: float, risk: float, seed: int = SEED,
                               max_blocks: int = 1024) -> np.ndarray:
    """The betting test of "mean spend <= budget" for many routings at once (routing k: rows with
    rank < m[k] cheap), from block sums of Z = spend - budget and Z^2.

    Spends are continuous, so a block's log-wealth is bounded from below instead of summed exactly:
    log(1 - y) >= -y - g(c) y^2 for every y <= c < 1, g(c) = (-log(1 - c) - c) / c^2 (the bound of
    the empirical-Bernstein betting test of Waudby-Smith & Ramdas). A lower bound on the wealth that
    reaches 1 / delta means the wealth does, so the test stays valid. Blocks and Ville's inequality
    at block ends as in `betting_floor_log_evalues`.
    """
    n = len(rank)
    M = len(m)
    b = np.broadcast_to(np.asarray(budget, dtype=float), (M,))[None, :]  # one budget per routing, or one for all
    hi = cap - b
    if n == 0:
        return np.zeros(M)
    blk, nb = _block_layout(n, seed, max_blocks)
    cc, cs = np.asarray(spend_cheap, dtype=float), np.asarray(spend_strong, dtype=float)
    d1, d2 = _block_sums(blk, nb, rank, m, [cc - cs, cc * cc - cs * cs])
    rows = np.bincount(blk, minlength=nb).astype(float)[:, None]
    s1 = np.bincount(blk, weights=cs, minlength=nb)[:, None] + d1  # the block's spend at each routing
    s2 = np.bincount(blk, weights=cs * cs, minlength=nb)[:, None] + d2
    sum_z = s1 - rows * b  # Z = spend - budget
    sum_z2 = s2 - 2.0 * b * s1 + rows * b * b
    k = _shift(np.cumsum(rows[:, 0]))[:, None]
    lam = _bets(_shift(np.cumsum(sum_z, axis=0).T).T, _shift(np.cumsum(sum_z2, axis=0).T).T, k,
                prior_var=cap**2 / 4.0, cap=BET_CAP / hi, n=n, log_inv=math.log(1.0 / risk))
    c = np.maximum(lam * hi, 1e-9)
    g = (-np.log1p(-c) - c) / c**2
    block_log = -lam * sum_z - g * lam**2 * sum_z2
    return np.asarray(np.cumsum(block_log, axis=0).max(axis=0), dtype=float)


def betting_rejects(Z: np.ndarray, hi: np.ndarray | float, delta: float, **kw) -> np.ndarray:
    """Whether the betting test rejects H0: E[Z] > 0 at level delta, per row of Z (see betting_log_evalue)."""
    return betting_log_evalue(Z, hi, delta, **kw) >= math.log(1.0 / delta) - 1e-12


def _sequence_last(make_z, count: int, delta: float, *, chunk: int = _CHUNK,
                   permutations: int = PERMUTATIONS, seed: int = SEED, n: int) -> int:
    """Fixed-sequence testing with the betting test: index of the last hypothesis before the first
    one not rejected (-1: the first fails). make_z(lo, hi) -> (Z, hi, lo) for hypotheses lo..hi-1."""
    orders = _orders(n, permutations, seed)
    start = 0
    while start < count:
        stop = min(count, start + chunk)
        Z, hi, lo = make_z(start, stop)
        ok = betting_rejects(Z, hi, delta, lo=lo, orders=orders)
        if not ok.all():
            return start + int(np.flatnonzero(~ok)[0]) - 1
        start = stop
        chunk = min(chunk * 2, 4 * _CHUNK)
    return count - 1


def _floor_z(dz: np.ndarray, s: np.ndarray, floor: float | np.ndarray) -> np.ndarray:
    """Z = (loss - gain) - (1 - F) x [reference passes], per routing (rows of dz: loss - gain per row)."""
    f = np.asarray(floor, dtype=float)
    return dz - (1.0 - (f[:, None] if f.ndim else f)) * s[None, :]


def betting_floor_sequence(dz_of: Callable[[int, int], np.ndarray], count: int, s: np.ndarray, *, floor: float,
                           risk: float, safe: np.ndarray | None = None) -> tuple[int, float]:
    """Fixed-sequence betting test of routings ordered safest first against a reference.

    dz_of(i, j) -> (j - i, n): per row, +1 where routing k loses a pass against the reference (the
    reference passes, the routing's model fails), -1 where it wins one, else 0; s: the reference
    passes. Z = dz - (1 - F) s lies in [-1, F] (a loss row has s = 1). `safe[k]`: routing k is the
    reference itself (nothing routed away), whose floor holds by definition when F <= 1 (not tested).
    Returns the last certified index (-1: none) and the lower bound on quality / reference there
    (1.0 when none).
    """
    n = len(s)
    hi = max(floor, 1e-9)

    def make(i: int, j: int) -> tuple[np.ndarray, float, float]:
        return _floor_z(dz_of(i, j), s, floor), hi, -1.0

    skip = 0
    if safe is not None and floor <= 1.0:
        while skip < count and safe[skip]:
            skip += 1
    last = skip + _sequence_last(lambda i, j: make(skip + i, skip + j), count - skip, risk, n=n)
    if last < 0:
        return last, 1.0
    if safe is not None and safe[last] and floor <= 1.0:
        return last, 1.0
    return last, betting_floor_bound(dz_of(last, last + 1)[0], s, floor=floor, risk=risk)


def betting_floor_bound(dz: np.ndarray, s: np.ndarray, *, floor: float, risk: float, step: float = 0.001) -> float:
    """The largest F' (from `floor` upward in steps) the betting test still certifies for one routing:
    a lower bound on its quality / reference (a fixed sequence over F', so itself valid at `risk`)."""
    fs = floor + step * np.arange(0, int(round(max(0.5, 1.5 - floor) / step)) + 1)
    n = len(s)

    def make(i: int, j: int) -> tuple[np.ndarray, np.ndarray, float]:
        f = fs[i:j]
        return _floor_z(np.broadcast_to(dz, (j - i, n)), s, f), np.maximum(f, 1e-9), -1.0

    last = _sequence_last(make, len(fs), risk, n=n)
    return float(fs[max(last, 0)])


def betting_budget_sequence(spend_of: Callable[[int, int], np.ndarray], count: int, n: int, cap: float,
                            budget: float, *, risk: float) -> int:
    """Fixed-sequence betting test of "mean spend <= budget", routings ordered cheapest first.

    spend_of(i, j) -> (j - i, n) per-row spends in [0, cap] (cap: the largest per-request spend in
    the log, the assumption being that no new request costs more). Z = spend - budget lies in
    [-budget, cap - budget]. Returns the last certified index (-1: none).
    """
    if cap <= budget:  # no request can cost more than the budget: every routing holds it
        return count - 1
    return _sequence_last(lambda i, j: (spend_of(i, j) - budget, cap - budget, -budget), count, risk, n=n)


def betting_budget_bound(spend: np.ndarray, cap: float, budget: float, *, risk: float) -> float:
    """Upper bound on the mean spend of one routing: the smallest budget' (from `budget` down in
    steps of budget / 1000) the betting test still certifies (a fixed sequence, valid at `risk`)."""
    if cap <= budget:
        return float(cap)
    bs = budget * (1.0 - np.arange(0, 1000) / 1000.0)
    bs = bs[bs < cap]
    n = len(spend)

    def make(i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = bs[i:j]
        return spend[None, :] - b[:, None], cap - b, -b

    last = _sequence_last(make, len(bs), risk, n=n)
    return float(bs[max(last, 0)])
