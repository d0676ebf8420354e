"""Risk-controlled thresholds: Learn-then-Test over a fixed sequence of thresholds (docs/guarantee.md).

The promise for `--quality-floor F --risk d`: with probability at least 1 - d over the labelled
sample, the expected quality of the served routing on new traffic from the same distribution is at
least F x the always-strong quality. For a budget goal (cost per request, strong-call share) the
promise is an upper bound on the expected spend instead.

How (Angelopoulos et al. 2021, "Learn then Test"): the thresholds form a sequence fixed before the
data is seen (all strong, then 1.000, 0.999, ..., 0.000). Each threshold t is tested at level d
against H_t "the goal fails at t"; testing in order and stopping at the first H_t not rejected
controls the chance of certifying any failing threshold at d (fixed-sequence testing needs no
multiplicity correction). The default test of one threshold, `exact` (training/exact_floor.py),
tests the counts of passes lost and won against always-strong exactly, at the full d. The earlier
`clopper-pearson` test is a union of three exact Clopper-Pearson bounds at d/3 each (scores are
pass/fail, so per-row losses are Bernoulli):

    quality(t) >= F * quality(strong)
    <=>  P(cheap routed, cheap fails, strong passes) - P(cheap routed, cheap passes, strong fails)
         <= (1 - F) * P(strong passes)

rejected when upper(loss) - lower(gain) <= (1 - F) * lower(strong). A budget is a mean of per-row
spends in [0, B] (B = the largest per-request cost in the log): Clopper-Pearson when the spend is
0/1 (the strong-call share), Hoeffding-Bentkus otherwise. `betting` tests each threshold with one
betting test of one per-row quantity at the full d (training/betting.py); it is what `exact` runs
for budgets, N models and logs over EXACT_MAX_ROWS rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.betting import (
    BET_CAP,
    betting_budget_bound,
    betting_budget_log_evalues,
    betting_budget_sequence,
    betting_floor_bound,
    betting_floor_log_evalues,
    betting_floor_sequence,
    betting_log_evalue,
    betting_rejects,
)
from training.exact_floor import MAX_ROWS as EXACT_MAX_ROWS
from training.exact_floor import exact_floor_on_grid

__all__ = [
    "ALL_STRONG",
    "CERTIFICATES",
    "DEFAULT_CERTIFICATE",
    "EXACT_MAX_ROWS",
    "GRID",
    "METHOD",
    "METHOD_BETTING",
    "METHOD_EXACT",
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
    "effective_certificate",
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


# ---------------------------------------------------------------- the exact and betting certificates
# The tests themselves are training/exact_floor.py and training/betting.py; here: their names in the artifact.

CERTIFICATES = ("exact", "betting", "clopper-pearson")
DEFAULT_CERTIFICATE = "exact"
METHOD_BETTING = "ltt-fixed-sequence-betting"
METHOD_EXACT = "ltt-fixed-sequence-exact"


def effective_certificate(certificate: str, *, kind: str, n: int = 0) -> str:
    """The test a goal runs under `certificate`. Why not always the one named: "exact" tests counts of
    lost and won passes, so it serves the quality floor of a pair on logs up to EXACT_MAX_ROWS rows;
    a spend, N models and larger logs take the betting test (the recorded method says which ran)."""
    if certificate == "exact" and (kind != "quality_floor" or n > EXACT_MAX_ROWS):
        return "betting"
    return certificate


def method_for(certificate: str, *, budget_hb: bool = False) -> str:
    """The method string recorded in the artifact for a certificate (docs/guarantee.md)."""
    if certificate not in CERTIFICATES:
        raise ValueError(f"certificate must be one of {CERTIFICATES}, got {certificate!r}")
    if certificate == "betting":
        return METHOD_BETTING
    if certificate == "exact":
        return METHOD_EXACT
    return METHOD_BUDGET_HB if budget_hb else METHOD


def certificate_of(method: str | None) -> str | None:
    """Which certificate a recorded method used: exact, betting, clopper-pearson (also
    Hoeffding-Bentkus budgets, the pre-betting family), or None for the empirical rule."""
    if not method or method == "empirical":
        return None
    if method == METHOD_EXACT:
        return "exact"
    return "betting" if "betting" in method else "clopper-pearson"


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

    certificate "exact" (default): one exact test of the counts of lost and won passes per threshold
    at the full risk (training/exact_floor.py; betting above EXACT_MAX_ROWS rows); "betting": one
    betting test of E[Z] <= 0; "clopper-pearson": the union of three exact bounds at risk / 3
    (docs/guarantee.md).
    """
    _check_binary("cheap_passed", cheap_passed)
    _check_binary("strong_passed", strong_passed)
    n = len(p)
    certificate = effective_certificate(certificate, kind="quality_floor", n=n)
    method = method_for(certificate)
    loss = ((cheap_passed < 0.5) & (strong_passed >= 0.5)).astype(float)  # cheap routed here loses a pass
    gain = ((cheap_passed >= 0.5) & (strong_passed < 0.5)).astype(float)  # cheap routed here wins one
    m, (kp, km) = _cheap_counts(p, [loss, gain], GRID)
    ks = float(strong_passed.sum())
    if certificate == "betting":
        last, bound = _betting_floor_on_grid(p, m, loss - gain, np.asarray(strong_passed, dtype=float), floor=floor,
                                             risk=risk)
    elif certificate == "exact":
        last, bound = exact_floor_on_grid(m, kp, km, ks, floor=floor, risk=risk)
    else:
        last, bound = floor_sequence(kp, km, ks, n=n, floor=floor, risk=risk)
    if last >= 1 and m[last] > 0:
        return RiskChoice(float(GRID[last]), True, n, risk, method, bound, None)
    # Nothing cheap certified: all strong, and how many rows the best observed gap would need.
    need = n_needed if certificate == "clopper-pearson" else betting_n_needed
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
    certificate = effective_certificate(certificate, kind="budget")
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
