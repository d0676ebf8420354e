"""The exact certificate of the quality floor (`--certificate exact`, docs/guarantee.md).

Why: the betting test is valid for any bounded variable and pays for it with a Chernoff-type
width, about 1.5 times a normal approximation's at risk 0.05. The floor's rows are not any bounded
variable. Against always-strong, a row routed cheap loses a pass (cheap fails, strong passes), wins
one (cheap passes, strong fails) or changes nothing, so the counts have an exact law and the test
can spend the whole risk with no inequality in between.

The test of one routing. Each row falls in one of four classes: loss, gain, "strong passes and
nothing lost", "strong fails and nothing gained", with rates a, b, c, e. The floor F x always-strong
fails when a - b > (1 - F)(a + c). Leave out the last class: given the number N of the other rows,
their classes are i.i.d. with rates (a, b, c) / (1 - e), and the condition is homogeneous in
(a, b, c), so it reads alpha - F beta > 1 - F on the normalised rates (alpha, beta) alone. The
strong model's pass rate is not a nuisance any more.

- The rejection region is monotone (one loss fewer or one gain more never leaves it). Coupled
  draws show its probability falls as alpha grows and rises as beta grows, so its supremum over
  the null sits on the line alpha = 1 - F + F beta.
- On a grid of beta, the probability at (alpha(beta_j), beta_{j+1}) bounds it over the whole step
  (a smaller alpha, a larger beta): the maximum over the grid is a proven bound, not a sample.
- The region is {signed-root likelihood ratio <= c}, made monotone, with the largest c whose bound
  is at most the risk; in p-value form (`floor_pvalue`), a routing is certified when the bound for
  the region cut at its own statistic is at most the risk. The test is conditionally exact for
  every N, so exact unconditionally; fixed-sequence testing needs nothing more of each test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_ROWS = 2500  # above this many labelled rows betting runs instead: the exact tables grow with the rows
TAIL = 1e-13  # loss counts less likely than this at a corner point are left out of its sum, their mass added whole
CUT_STEP = 0.005  # the cut is searched on this grid of the statistic (normal scale)


@dataclass(frozen=True)
class ExactRegion:
    """Counts (losses, gains) of N rows certify iff gains >= min_gains[losses]."""

    min_gains: np.ndarray  # (N + 1,) nondecreasing; N + 1 means no count of gains certifies
    size: float  # the proven bound on its probability under the null (at most the test's risk)
    cut: float  # the statistic's cut it was made from

    def certifies(self, losses: int, gains: int) -> bool:
        return bool(gains >= self.min_gains[losses])


def _loglik(count: np.ndarray, rate: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, count * np.log(np.clip(rate, 1e-300, 1.0)), 0.0)


def signed_root(losses: np.ndarray, gains: np.ndarray, n: int, *, floor: float) -> np.ndarray:
    """The signed root likelihood ratio of "alpha - F beta = 1 - F" at counts (losses, gains) of n.

    Negative where the losses run below the margin (the floor looks kept). Why this statistic: its
    null law is near normal even for small counts, so one cut wastes little of the risk anywhere
    along the null line. Counts with losses + gains > n cannot occur: -inf (inside the region).
    """
    margin = 1.0 - floor
    losses, gains = np.broadcast_arrays(np.asarray(losses, dtype=float), np.asarray(gains, dtype=float))
    rest = n - losses - gains
    valid = rest >= 0
    rest = np.maximum(rest, 0.0)
    full = _loglik(losses, losses / n) + _loglik(gains, gains / n) + _loglik(rest, rest / n)

    def on_line(beta: np.ndarray) -> np.ndarray:
        alpha = margin + floor * beta
        return _loglik(losses, alpha) + _loglik(gains, beta) + _loglik(rest, 1.0 - alpha - beta)

    # The likelihood on the line alpha = margin + F beta is concave in beta; times alpha beta gamma its
    # slope is a quadratic A beta^2 + B beta + C, so its maximum is a root of that quadratic or an end.
    b_lo, b_hi = max(0.0, -margin / floor), (1.0 - margin) / (1.0 + floor)
    a2 = -floor * (1.0 + floor) * n
    b1 = floor**2 * losses + gains * (floor**2 - margin * (1.0 + floor)) - (1.0 + floor) * rest * margin
    c0 = gains * margin * floor
    disc = np.sqrt(np.maximum(b1**2 - 4.0 * a2 * c0, 0.0))
    tiny = 1e-12 * (b_hi - b_lo)
    candidates = [np.clip(r, b_lo + tiny, b_hi - tiny) for r in ((-b1 - disc) / (2 * a2), (-b1 + disc) / (2 * a2))]
    candidates += [np.full(losses.shape, b_lo + tiny), np.full(losses.shape, b_hi - tiny)]
    line = np.max([on_line(c) for c in candidates], axis=0)
    root = np.sqrt(2.0 * np.maximum(full - line, 0.0))
    stat = np.sign(losses / n - floor * gains / n - margin) * root
    return np.where(valid, stat, -np.inf)


def _min_gains(n: int, *, floor: float, cut: float) -> np.ndarray:
    """For each count of losses, the fewest gains whose statistic is at or under the cut (bisection on
    gains: the statistic falls as gains rise), then made nondecreasing in losses (monotone region)."""
    losses = np.arange(n + 1)
    lo = np.full(n + 1, -1)  # fails (or is below the range)
    hi = np.full(n + 1, n + 1)  # certifies (n + 1: beyond the range, nothing certifies)
    ok0 = signed_root(losses, np.zeros(n + 1), n, floor=floor) <= cut
    hi = np.where(ok0, 0, hi)
    lo = np.where(ok0, -1, 0)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = np.where(open_, (lo + hi) // 2, lo)
        ok = signed_root(losses, np.minimum(mid, n), n, floor=floor) <= cut
        hi = np.where(open_ & ok, mid, hi)
        lo = np.where(open_ & ~ok, mid, lo)
    return np.maximum.accumulate(hi)


def _boundary(n: int, *, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid steps' corner points along the null line: alpha at each step's left end, beta at its right.

    Steps are uniform in sqrt(beta), so near 0, where the counts are small, they are fine; their
    number grows with sqrt(n), each step under about a fifth of alpha's standard error (at 850 rows,
    four times as many steps moved the bound by less than 1e-6).
    """
    margin = 1.0 - floor
    b_lo = max(0.0, -margin / floor)
    b_hi = (1.0 - margin) / (1.0 + floor)
    steps = int(max(100, 10 * math.sqrt(n)))
    beta = b_lo + (b_hi - b_lo) * (np.arange(steps + 1) / steps) ** 2
    alpha = np.clip(margin + floor * beta[:-1], 0.0, 1.0)
    return alpha, np.minimum(beta[1:], 1.0 - alpha)


@dataclass(frozen=True)
class _NullLaw:
    """The losses' law at the grid's corner points, the negligible counts left out (their mass kept)."""

    rows: np.ndarray  # corner point of each kept (corner, losses) pair
    losses: np.ndarray
    pmf: np.ndarray
    cond: np.ndarray  # the gains' rate given the losses: beta / (1 - alpha)
    dropped: np.ndarray  # per corner point: the mass of the counts left out


@lru_cache(maxsize=8)  # a fixed sequence asks for the same few N in turn; a law holds up to ~20 MB
def _null_law(n: int, *, floor: float) -> _NullLaw:
    from scipy.stats import binom

    alpha, beta = _boundary(n, floor=floor)
    # a window of loss counts per corner, +-12 standard deviations; whatever it leaves out is counted in `dropped`
    sd = np.sqrt(n * alpha * (1 - alpha)) + 1.0
    lo = np.maximum(np.floor(n * alpha - 12 * sd), 0).astype(np.int64)
    width = int(min(n + 1, np.ceil(24 * sd.max()) + 2))
    losses = np.minimum(lo[:, None] + np.arange(width)[None, :], n)
    pmf = binom.pmf(losses, n, alpha[:, None])
    pmf = np.where(np.diff(losses, axis=1, prepend=-1) > 0, pmf, 0.0)  # a count clipped to n is summed once
    keep = pmf > TAIL
    rows, cols = np.nonzero(keep)
    dropped = np.clip(1.0 - np.where(keep, pmf, 0.0).sum(axis=1), 0.0, 1.0)  # all mass not summed, window or tail
    cond = np.clip(beta / np.maximum(1.0 - alpha, 1e-300), 0.0, 1.0)[rows]
    return _NullLaw(rows, losses[rows, cols], pmf[keep], cond, dropped)


def _size(min_gains: np.ndarray, n: int, law: _NullLaw) -> float:
    """The largest probability of the region at the grid's corner points (negligible counts added whole)."""
    from scipy.special import bdtrc

    g = min_gains[law.losses]
    trials = n - law.losses
    # P(gains >= g | losses), gains ~ Binomial(n - losses, cond); bdtrc(k, ...) = P(X > k)
    tail = (g <= 0).astype(float)
    some = (g > 0) & (g <= trials)
    tail[some] = bdtrc(g[some] - 1, trials[some], law.cond[some])
    per_corner = np.bincount(law.rows, weights=law.pmf * tail, minlength=len(law.dropped)) + law.dropped
    return float(per_corner.max())


def region_at(n: int, *, floor: float, cut: float) -> ExactRegion:
    """The monotone region {statistic <= cut} of N = n rows and its proven size under the null."""
    min_gains = _min_gains(n, floor=floor, cut=cut)
    return ExactRegion(min_gains, _size(min_gains, n, _null_law(n, floor=floor)), cut)


def exact_region(n: int, *, floor: float, risk: float) -> ExactRegion:
    """The largest region {statistic <= cut} of N = n rows whose proven size is at most `risk`, the
    cut on a grid of CUT_STEP (bisection in a fixed bracket: the same counts always get the same region).
    The certificate itself uses p-values (`floor_pvalue`), the same test with the cut not rounded."""
    none = ExactRegion(np.full(n + 1, n + 1, dtype=np.int64), 0.0, -math.inf)
    if n <= 0:
        return none
    lo, hi = round(-2.5 / CUT_STEP), round(-1.0 / CUT_STEP)  # steps: lo holds, hi is not known to
    best = region_at(n, floor=floor, cut=lo * CUT_STEP)
    while best.size > risk:
        if lo * CUT_STEP < -40:
            return none
        lo -= round(0.5 / CUT_STEP)
        best = region_at(n, floor=floor, cut=lo * CUT_STEP)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = region_at(n, floor=floor, cut=mid * CUT_STEP)
        if r.size <= risk:
            lo, best = mid, r
        else:
            hi = mid
    return best


def floor_pvalue(losses: int, gains: int, kept: int, *, floor: float) -> float:
    """The exact p-value of "the floor F fails" for one routing: the proven size of the smallest region
    holding the observed counts. `losses` / `gains`: rows lost / won against always-strong; `kept`: rows
    where the strong model passes and nothing is lost."""
    n = losses + gains + kept
    if n <= 0:
        return 1.0
    region = region_at(n, floor=floor, cut=float(signed_root(np.array(losses), np.array(gains), n, floor=floor)))
    # a region that missed its own counts cannot happen with a monotone statistic; if it did, no certificate
    return region.size if region.certifies(losses, gains) else 1.0


def floor_certified(losses: int, gains: int, kept: int, *, floor: float, risk: float) -> bool:
    """One routing certified at `risk`: its exact p-value is at most the risk."""
    return floor_pvalue(losses, gains, kept, floor=floor) <= risk


def exact_floor_on_grid(m: np.ndarray, losses: np.ndarray, gains: np.ndarray, strong_passes: float, *,
                        floor: float, risk: float) -> tuple[int, float]:
    """The fixed sequence over the threshold grid: m[i] rows routed cheap at grid point i, with
    losses[i] and gains[i] among them. Returns the last certified grid index (-1: none) and a lower
    bound on quality / always-strong there (the floor raised in steps of 0.001 while it still
    certifies: a fixed sequence too)."""
    ks = int(round(strong_passes))
    known: dict[tuple[int, int, float], bool] = {}

    def ok(i: int, f: float) -> bool:
        if m[i] == 0 and f <= 1.0:
            return True  # all strong is the reference itself
        lo, ga = int(round(losses[i])), int(round(gains[i]))
        if (lo, ga, f) not in known:
            known[lo, ga, f] = floor_certified(lo, ga, ks - lo, floor=f, risk=risk)
        return known[lo, ga, f]

    last = -1
    for i in range(len(m)):
        if not ok(i, floor):
            break
        last = i
    if last < 0 or m[last] == 0:
        return last, 1.0
    bound = floor
    for raised in floor + 0.001 * np.arange(1, 100):
        if not ok(last, float(raised)):
            break
        bound = float(raised)
    return last, bound
