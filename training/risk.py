"""Risk-controlled thresholds: Learn-then-Test over a fixed sequence of thresholds (docs/guarantee.md).

The promise for `--quality-floor F --risk d`: with probability at least 1 - d over the labelled
sample, the expected quality of the served routing on new traffic from the same distribution is at
least F x the always-strong quality. For a budget goal (cost per request, strong-call share) the
promise is an upper bound on the expected spend instead.

How (Angelopoulos et al. 2021, "Learn then Test"): the thresholds form a sequence fixed before the
data is seen (all strong, then 1.000, 0.999, ..., 0.000). Each threshold t is tested at level d
against H_t "the goal fails at t"; testing in order and stopping at the first H_t not rejected
controls the chance of certifying any failing threshold at d (fixed-sequence testing needs no
multiplicity correction). The test of one threshold is a union of three exact Clopper-Pearson
bounds at d/3 each (scores are pass/fail, so per-row losses are Bernoulli):

    quality(t) >= F * quality(strong)
    <=>  P(cheap routed, cheap fails, strong passes) - P(cheap routed, cheap passes, strong fails)
         <= (1 - F) * P(strong passes)

rejected when upper(loss) - lower(gain) <= (1 - F) * lower(strong). A budget is a mean of per-row
spends in [0, B] (B = the largest per-request cost in the log): Clopper-Pearson when the spend is
0/1 (the strong-call share), Hoeffding-Bentkus otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_STRONG",
    "CERTIFICATES",
    "DEFAULT_CERTIFICATE",
    "GRID",
    "METHOD",
    "METHOD_BETTING",
    "RiskChoice",
    "betting_budget_bound",
    "betting_budget_log_evalues",
    "betting_budget_sequence",
    "betting_floor_bound",
    "betting_floor_log_evalues",
    "betting_floor_sequence",
    "betting_log_evalue",
    "betting_n_needed",
    "betting_rejects",
    "binomial_lower",
    "binomial_upper",
    "budget_sequence",
    "certify_budget",
    "certify_quality_floor",
    "certificate_of",
    "floor_sequence",
    "hb_upper",
    "last_before_failure",
    "method_for",
    "n_needed",
    "quality_lower_bound",
]

ALL_STRONG = math.nextafter(1.0, 2.0)  # a threshold no probability reaches: every request goes strong
METHOD = "ltt-fixed-sequence-clopper-pearson"
METHOD_BUDGET_HB = "ltt-fixed-sequence-hoeffding-bentkus"
# Fixed before any data is seen (the proof needs it): from safest (all strong) to all cheap.
GRID = np.concatenate([[ALL_STRONG], np.arange(1000, -1, -1) / 1000.0])
MAX_N_NEEDED = 10_000_000


def binomial_upper(k: np.ndarray | float, n: int | np.ndarray, delta: float) -> np.ndarray:
    """Clopper-Pearson upper bound: P(true rate <= bound) >= 1 - delta, for k successes of n."""
    from scipy.stats import beta

    k_, n_ = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    out = np.asarray(beta.ppf(1.0 - delta, k_ + 1.0, np.maximum(n_ - k_, 1e-300)), dtype=float)
    return np.where(k_ >= n_, 1.0, out)


def binomial_lower(k: np.ndarray | float, n: int | np.ndarray, delta: float) -> np.ndarray:
    """Clopper-Pearson lower bound: P(true rate >= bound) >= 1 - delta, for k successes of n."""
    from scipy.stats import beta

    k_, n_ = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    out = np.asarray(beta.ppf(delta, np.maximum(k_, 1e-300), n_ - k_ + 1.0), dtype=float)
    return np.where(k_ <= 0, 0.0, out)


def _h1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.clip(a, 1e-15, 1 - 1e-15)
    b = np.clip(b, 1e-15, 1 - 1e-15)
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def hb_pvalue(mean: np.ndarray, n: int, mu: np.ndarray) -> np.ndarray:
    """Hoeffding-Bentkus p-value of H: E[X] >= mu for X in [0, 1], given the sample mean (Bates et al. 2021)."""
    from scipy.stats import binom

    m = np.asarray(mean, dtype=float)
    mu_ = np.asarray(mu, dtype=float)
    hoeffding = np.exp(-n * _h1(np.minimum(m, mu_), mu_))
    bentkus = math.e * binom.cdf(np.ceil(n * m), n, mu_)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def hb_upper(mean: np.ndarray | float, n: int, delta: float, *, iters: int = 50) -> np.ndarray:
    """Upper confidence bound on E[X] (X in [0, 1]) at level delta: the smallest mu H_mu rejects."""
    m = np.atleast_1d(np.asarray(mean, dtype=float))
    lo, hi = m.copy(), np.ones_like(m)
    for _ in range(iters):
        mid = (lo + hi) / 2
        rejected = hb_pvalue(m, n, mid) <= delta
        hi = np.where(rejected, mid, hi)
        lo = np.where(rejected, lo, mid)
    return hi


@dataclass(frozen=True)
class RiskChoice:
    """The threshold certified by fixed-sequence testing, and what it rests on."""

    threshold: float
    certified: bool  # some routing other than the safe end was certified
    n: int
    risk: float
    method: str
    bound: float  # at the threshold: quality floor goal -> a lower bound on quality / strong; budget -> upper bound
    n_needed: int | None  # when not certified: the sample size at which the observed best gap would certify


def _cheap_counts(p: np.ndarray, columns: list[np.ndarray], grid: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """For each grid threshold t: how many rows have p >= t, and each column's sum over them."""
    order = np.argsort(-p, kind="stable")
    neg = -p[order]
    m = np.searchsorted(neg, -grid, side="right")  # rows with p >= t
    sums = [np.concatenate([[0.0], np.cumsum(c[order])])[m] for c in columns]
    return m, sums


def _quality_margin(kp: np.ndarray, km: np.ndarray, ks: np.ndarray, *, n: np.ndarray | int, floor: float,
                    delta: float) -> np.ndarray:
    """upper(loss) - lower(gain) - (1 - F) * bound(strong): <= 0 certifies the floor at that threshold."""
    d = delta / 3.0
    strong = binomial_lower(ks, n, d) if floor <= 1.0 else binomial_upper(ks, n, d)
    return binomial_upper(kp, n, d) - binomial_lower(km, n, d) - (1.0 - floor) * strong


def last_before_failure(ok: np.ndarray) -> int:
    """Index of the last grid point before the first failure (-1 if the first one fails)."""
    bad = np.flatnonzero(~ok)
    return (int(bad[0]) if len(bad) else len(ok)) - 1


def quality_lower_bound(kp: np.ndarray, km: np.ndarray, ks: float, *, n: int, risk: float) -> np.ndarray:
    """Lower bound on quality / reference of routings with kp losses and km wins against it (same 3 bounds)."""
    lcb_ref = float(binomial_lower(ks, n, risk / 3.0))
    if lcb_ref <= 0:
        return np.full(len(np.atleast_1d(kp)), np.nan)
    net = binomial_upper(np.asarray(kp, dtype=float), n, risk / 3) - binomial_lower(np.asarray(km, dtype=float), n,
                                                                                 risk / 3)
    return np.asarray(1.0 - net / lcb_ref, dtype=float)


def floor_sequence(kp: np.ndarray, km: np.ndarray, ks: float, *, n: int, floor: float,
                   risk: float) -> tuple[int, float]:
    """Fixed-sequence test of routings ordered safest first, against a reference (the strong model).

    kp[i] / km[i]: rows where routing i loses / wins a pass against the reference; ks: the
    reference's passes; n rows. Returns the index of the last certified routing (-1: none) and
    the lower bound on quality / reference there (1.0 when none).
    """
    ok = _quality_margin(np.asarray(kp, dtype=float), np.asarray(km, dtype=float),
                         np.full(len(kp), float(ks)), n=n, floor=floor, delta=risk) <= 0.0
    last = last_before_failure(ok)
    if last < 0:
        return last, 1.0
    return last, float(quality_lower_bound(kp[last: last + 1], km[last: last + 1], ks, n=n, risk=risk)[0])


def budget_sequence(spend: np.ndarray, n: int, cap: float, *, risk: float, binary: bool) -> tuple[np.ndarray, str]:
    """Upper confidence bounds on the mean spend of routings (spend: each routing's total over n rows).

    Spends per row lie in [0, cap] (cap: the largest per-request spend in the log, the assumption
    being that no new request costs more): Clopper-Pearson when they are 0/1, Hoeffding-Bentkus
    otherwise. Returns the bounds (in spend units per request) and the method.
    """
    spend = np.asarray(spend, dtype=float)
    if cap <= 0:
        return np.zeros(len(spend)), METHOD
    if binary:
        return np.asarray(binomial_upper(spend, n, risk), dtype=float), METHOD
    return hb_upper(spend / n / cap, n, risk) * cap, METHOD_BUDGET_HB


# ---------------------------------------------------------------- the betting certificate (the default)
#
# Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B.
# One test per hypothesis of the mean of one bounded per-row quantity Z (Z <= hi):
#     H0: E[Z] > 0 (the goal fails)   rejected when the e-value below reaches 1 / delta.
# A gambler starts with wealth 1 and before row i stakes lambda_i in [0, c / hi) (chosen from rows
# 1..i-1 only) on "Z is negative": K_i = K_{i-1} (1 - lambda_i Z_i). Under H0 each factor has
# conditional mean 1 - lambda_i E[Z] <= 1 and is > 0 (lambda_i Z_i <= c < 1), so K is a nonnegative
# supermartingale with K_0 = 1 and E[K_n] <= 1. The rows are read in a seeded random order; the
# e-value is the mean of K_n over a few such orders (a mean of e-values is an e-value), and Markov's
# inequality gives P(e >= 1 / delta) <= delta under H0 (docs/guarantee.md).

CERTIFICATES = ("betting", "clopper-pearson")
DEFAULT_CERTIFICATE = "betting"
METHOD_BETTING = "ltt-fixed-sequence-betting"
BET_CAP = 0.5  # c: the stake never exceeds c / hi, so one row can at most halve the wealth
PERMUTATIONS = 1  # row orders (1: the running maximum, Ville; more: the mean of the final wealths, Markov;
# measured on routellm-mmlu, 4 or 16 orders changed the cheap share by 0.1 point: one order is the default)
SEED = 20231  # the row orders are fixed by this seed: the same log certifies the same threshold
_CHUNK = 48  # hypotheses tested at once along a sequence (the sequence stops at the first failure)


def method_for(certificate: str, *, budget_hb: bool = False) -> str:
    """The method string recorded in the artifact for a certificate (docs/guarantee.md)."""
    if certificate not in CERTIFICATES:
        raise ValueError(f"certificate must be one of {CERTIFICATES}, got {certificate!r}")
    if certificate == "betting":
        return METHOD_BETTING
    return METHOD_BUDGET_HB if budget_hb else METHOD


def certificate_of(method: str | None) -> str | None:
    """Which certificate a recorded method used: betting, clopper-pearson (also Hoeffding-Bentkus
    budgets, the pre-betting family), or None for the empirical rule."""
    if not method or method == "empirical":
        return None
    return "betting" if "betting" in method else "clopper-pearson"


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
def betting_n_needed(some_cheap: np.ndarray, rate_p: np.ndarray, rate_m: np.ndarray, *, rate_s: float,
                     floor: float, risk: float) -> int | None:
    """Planning estimate of the rows the betting test needs for the observed gaps (None: no gap would do).

    With the tuned bet the log-wealth grows like sqrt(2 n L / v) |mu| - L (L = log 1/delta, mu the
    mean of Z, v its variance), so it reaches L at about n = 2 L v / mu^2 (and no sooner than L over
    the best capped bet's growth rate per row). Prefix maximum as in
    `n_needed` (a routing is reached only after every one before it). An estimate, not a promise.
    """
    some = np.asarray(some_cheap, dtype=bool)
    rp, rm = np.asarray(rate_p, dtype=float), np.asarray(rate_m, dtype=float)
    mu = rp - rm - (1.0 - floor) * rate_s
    ez2 = rp + rm - 2.0 * (1.0 - floor) * rp + (1.0 - floor) ** 2 * rate_s
    v = np.maximum(ez2 - mu**2, 1e-12)
    log_inv = math.log(1.0 / risk)
    # The stake is capped, so the wealth cannot grow faster than the best capped bet's growth rate
    # g = max E log(1 - lambda Z) over the four values of Z: at least log(1/delta) / g rows.
    f = max(floor, 1e-9)
    lam = np.linspace(0.0, BET_CAP / f, 201)[1:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = (rp[None, :] * np.log1p(-lam * floor) + rm[None, :] * np.log1p(lam)
                  + np.maximum(rate_s - rp, 0.0)[None, :] * np.log1p(lam * (1.0 - floor))).max(axis=0)
        need = np.where(mu < 0, 2.0 * log_inv * v / np.maximum(mu**2, 1e-300), np.inf)
        need = np.where(growth > 0, np.maximum(need, log_inv / np.maximum(growth, 1e-300)), np.inf)
    need = np.where(some, need, 0.0)
    need = np.where(need > MAX_N_NEEDED, np.inf, need)
    reach = np.maximum.accumulate(need)[some]
    if not len(reach) or not np.isfinite(reach.min()):
        return None
    return int(math.ceil(float(reach.min())))


def certify_quality_floor(p: np.ndarray, cheap_passed: np.ndarray, strong_passed: np.ndarray, *, floor: float,
                          risk: float, certificate: str = DEFAULT_CERTIFICATE) -> RiskChoice:
    """The cheapest threshold of GRID whose floor is certified by fixed-sequence testing; else all strong.

    certificate "betting" (default): one betting test of E[Z] <= 0 per threshold at the full risk;
    "clopper-pearson": the union of three exact bounds at risk / 3 (docs/guarantee.md).
    """
    _check_binary("cheap_passed", cheap_passed)
    _check_binary("strong_passed", strong_passed)
    method = method_for(certificate)
    n = len(p)
    loss = ((cheap_passed < 0.5) & (strong_passed >= 0.5)).astype(float)  # cheap routed here loses a pass
    gain = ((cheap_passed >= 0.5) & (strong_passed < 0.5)).astype(float)  # cheap routed here wins one
    m, (kp, km) = _cheap_counts(p, [loss, gain], GRID)
    ks = float(strong_passed.sum())
    if certificate == "betting":
        last, bound = _betting_floor_on_grid(p, m, loss - gain, np.asarray(strong_passed, dtype=float), floor=floor,
                                             risk=risk)
    else:
        last, bound = floor_sequence(kp, km, ks, n=n, floor=floor, risk=risk)
    if last >= 1 and m[last] > 0:
        return RiskChoice(float(GRID[last]), True, n, risk, method, bound, None)
    # Nothing cheap certified: all strong, and how many rows the best observed gap would need.
    need = betting_n_needed if certificate == "betting" else n_needed
    return RiskChoice(ALL_STRONG, False, n, risk, method, 1.0,
                      need(m > 0, kp / n, km / n, rate_s=ks / n, floor=floor, risk=risk))


def _betting_floor_on_grid(p: np.ndarray, m: np.ndarray, d: np.ndarray, s: np.ndarray, *, floor: float,
                           risk: float) -> tuple[int, float]:
    """The betting fixed sequence over GRID: each distinct routing (m[k] rows cheap, the top m by p)
    tested once, in grid order (all at once, from counts). Returns the last certified grid index and
    the bound there."""
    rank = np.empty(len(p), dtype=np.int64)
    rank[np.argsort(-p, kind="stable")] = np.arange(len(p))
    first = np.flatnonzero(np.r_[True, np.diff(m) != 0])  # grid index where each distinct routing starts
    um = m[first]
    ok = betting_floor_log_evalues(rank, (d > 0).astype(float), (d < 0).astype(float), s, um, floor=floor,
                                   risk=risk) >= math.log(1.0 / risk) - 1e-12
    ok |= (um == 0) & (floor <= 1.0)  # all strong is the reference itself: its floor holds, not tested
    last_u = last_before_failure(ok)
    if last_u < 0:
        return -1, 1.0
    ends = np.r_[first[1:], len(m)] - 1  # the last grid index of each distinct routing
    if um[last_u] == 0:
        return int(ends[last_u]), 1.0
    fs = floor + 0.001 * np.arange(0, int(round(max(0.5, 1.5 - floor) / 0.001)) + 1)  # F' upward: a fixed sequence
    ok_f = betting_floor_log_evalues(rank, (d > 0).astype(float), (d < 0).astype(float), s,
                                     np.full(len(fs), um[last_u]), floor=fs, risk=risk) >= math.log(1.0 / risk) - 1e-12
    return int(ends[last_u]), float(fs[max(last_before_failure(ok_f), 0)])


def n_needed(some_cheap: np.ndarray, rate_p: np.ndarray, rate_m: np.ndarray, *, rate_s: float, floor: float,
              risk: float) -> int | None:
    """Smallest n at which the fixed sequence would certify some cheap routing if the observed rates
    held (None: no observed gap would ever do).

    The arrays follow the sequence, safest first. A routing is reached only when every one before it
    passes too, so a point needs the largest n of its prefix. A routing that sends nothing cheap
    (`some_cheap` False) passes at any n. An estimate for planning, not a promise.
    """
    some = np.asarray(some_cheap, dtype=bool)
    slack = (1.0 - floor) * rate_s - (rate_p - rate_m)
    need = np.where(some, np.inf, 0.0)
    cand = np.flatnonzero((slack > 0) & some)
    if len(cand):
        rp, rm = rate_p[cand], rate_m[cand]
        lo = np.zeros(len(cand))
        hi = np.full(len(cand), math.log(MAX_N_NEEDED))
        for _ in range(40):  # bisection on log n, every candidate at once
            mid = (lo + hi) / 2
            nn = np.exp(mid)
            ok = _quality_margin(rp * nn, rm * nn, np.full_like(nn, rate_s) * nn, n=nn, floor=floor, delta=risk) <= 0
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        need[cand] = np.where(hi < math.log(MAX_N_NEEDED) - 1e-9, np.exp(hi), np.inf)
    reach = np.maximum.accumulate(need)[some]
    if not len(reach) or not np.isfinite(reach.min()):
        return None
    return int(math.ceil(float(reach.min())))


def certify_budget(p: np.ndarray, cheap_passed: np.ndarray, strong_passed: np.ndarray, *, spend_cheap: np.ndarray,
                   spend_strong: np.ndarray, budget: float, risk: float,
                   certificate: str = DEFAULT_CERTIFICATE) -> RiskChoice:
    """The best-quality threshold of GRID whose mean spend is certified <= budget; else all cheap.

    Tested from the cheap end (the safe end of a budget) upward; spends are scaled to [0, 1] by the
    largest per-request spend in the log (the assumption: no new request costs more).
    """
    method_for(certificate)
    n = len(p)
    grid = GRID[::-1]  # 0.000 (all cheap) ... 1.000, then all strong
    # Over the rows routed cheap at each threshold: the spends and the passes, cheap and strong.
    m, (sc, ss, pc, ps) = _cheap_counts(p, [spend_cheap, spend_strong, cheap_passed, strong_passed], grid)
    spend = sc + float(spend_strong.sum()) - ss
    quality = (float(strong_passed.sum()) - ps + pc) / n
    cap = float(max(np.max(spend_cheap), np.max(spend_strong)))
    binary = bool(np.all(np.isin(spend_cheap, (0.0, 1.0))) and np.all(np.isin(spend_strong, (0.0, 1.0))))
    if certificate == "betting":
        return _betting_budget_on_grid(p, m, grid, quality, spend_cheap=np.asarray(spend_cheap, dtype=float),
                                       spend_strong=np.asarray(spend_strong, dtype=float), cap=cap, budget=budget,
                                       risk=risk)
    upper, method = budget_sequence(spend, n, cap, risk=risk, binary=binary)
    ok = upper <= budget + 1e-12
    last = last_before_failure(ok)
    if last < 0:
        return RiskChoice(0.0, False, n, risk, method, float(upper[0]), None)
    best = quality[: last + 1].max()
    i = int(np.flatnonzero(quality[: last + 1] >= best - 1e-12)[0])  # the cheapest of the best
    return RiskChoice(float(grid[i]), True, n, risk, method, float(upper[i]), None)


def _betting_budget_on_grid(p: np.ndarray, m: np.ndarray, grid: np.ndarray, quality: np.ndarray, *,
                            spend_cheap: np.ndarray, spend_strong: np.ndarray, cap: float, budget: float,
                            risk: float) -> RiskChoice:
    n = len(p)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-p, kind="stable")] = np.arange(n)
    first = np.flatnonzero(np.r_[True, np.diff(m) != 0])
    um = m[first]

    def spend_at(u: int) -> np.ndarray:
        return np.where(rank < um[u], spend_cheap, spend_strong)

    if cap <= budget:  # no request can cost more than the budget: every routing holds it
        last_u = len(um) - 1
    else:
        ok = betting_budget_log_evalues(rank, spend_cheap, spend_strong, um, budget=budget, cap=cap,
                                        risk=risk) >= math.log(1.0 / risk) - 1e-12
        last_u = last_before_failure(ok)
    if last_u < 0:
        return RiskChoice(0.0, False, n, risk, METHOD_BETTING, max(float(spend_at(0).mean()), budget), None)
    last = int(np.r_[first[1:], len(m)][last_u] - 1)
    best = quality[: last + 1].max()
    i = int(np.flatnonzero(quality[: last + 1] >= best - 1e-12)[0])  # the cheapest of the best
    u = int(np.searchsorted(first, i, side="right") - 1)
    bs = budget * (1.0 - np.arange(0, 1000) / 1000.0)  # budget' downward: a fixed sequence
    bs = bs[(bs > 0) & (bs < cap)]
    bound = float(cap)
    if len(bs):
        ok_b = betting_budget_log_evalues(rank, spend_cheap, spend_strong, np.full(len(bs), um[u]), budget=bs, cap=cap,
                                          risk=risk) >= math.log(1.0 / risk) - 1e-12
        bound = float(bs[max(last_before_failure(ok_b), 0)])
    return RiskChoice(float(grid[i]), True, n, risk, METHOD_BETTING, bound, None)


def _check_binary(name: str, a: np.ndarray) -> None:
    if not np.all(np.isin(a, (0.0, 1.0))):
        raise ValueError(f"{name} must be pass/fail outcomes (0 or 1) for the risk-controlled floor")
