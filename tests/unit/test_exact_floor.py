"""The exact certificate of the quality floor (training/exact_floor.py, docs/guarantee.md): its proven
size bounds the true rejection rate everywhere on the null, draws at the null's boundary are certified
at most at the risk, the region is monotone, and the larger-log and non-floor cases take betting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import exact_floor
from training.exact_floor import exact_region, floor_certified
from training.risk import EXACT_MAX_ROWS, METHOD_BETTING, METHOD_EXACT, certify_quality_floor

F = 0.95


def _rejection_rate(region: exact_floor.ExactRegion, n: int, alpha: float, beta: float) -> float:
    """The region's exact probability at (alpha, beta), every count summed (no tail left out)."""
    from scipy.stats import binom

    losses = np.arange(n + 1)
    g = region.min_gains
    tail = binom.sf(g - 1, n - losses, beta / (1 - alpha))
    return float((binom.pmf(losses, n, alpha) * np.where(g <= 0, 1.0, np.where(g > n - losses, 0.0, tail))).sum())


@pytest.mark.parametrize("n", [60, 400])
def test_the_proven_size_bounds_the_rejection_rate_along_the_whole_null_line(n: int) -> None:
    region = exact_region(n, floor=F, risk=0.05)
    assert 0.0 < region.size <= 0.05
    assert np.all(np.diff(region.min_gains) >= 0)  # monotone: one loss more never certifies more
    # off the grid's points, at the line itself and inside the null (more losses)
    rates = [_rejection_rate(region, n, min(1.0, (1 - F) + F * beta + extra), beta)
             for beta in np.linspace(0.0, 0.48, 97) for extra in (0.0, 0.01)
             if (1 - F) + F * beta + extra + beta <= 1.0]
    assert max(rates) <= region.size + 1e-12
    assert max(rates) > 0.5 * region.size  # not vacuous: it spends most of the risk somewhere


def test_draws_at_the_boundary_are_certified_at_most_at_the_risk() -> None:
    rng = np.random.default_rng(3)
    risk = 0.1
    # Given N rows that are not "strong fails, nothing gained": (losses, gains, rest) on the null line.
    n, draws = 300, 20_000
    region = exact_region(n, floor=F, risk=risk)
    for beta in (0.0, 0.01, 0.05, 0.2):
        alpha = (1 - F) + F * beta
        counts = rng.multinomial(n, [alpha, beta, 1 - alpha - beta], size=draws)
        rate = float(np.mean(counts[:, 1] >= region.min_gains[counts[:, 0]]))
        assert rate <= risk + 3 * math.sqrt(risk * (1 - risk) / draws), (beta, rate)
    # Whole logs: four classes per row (loss, gain, strong passes and nothing lost, the rest), the floor
    # held with equality: loss - gain = (1 - F) x the strong pass rate.
    n, draws = 120, 400
    for s, b in ((0.8, 0.0), (0.6, 0.1)):
        a = b + (1 - F) * s
        counts = rng.multinomial(n, [a, b, s - a, 1 - s - b], size=draws)
        rate = np.mean([floor_certified(int(lo), int(ga), int(kept), floor=F, risk=risk) for lo, ga, kept, _ in counts])
        assert rate <= risk + 3 * math.sqrt(risk * (1 - risk) / draws), (s, b, rate)


def test_the_statistic_is_monotone_so_each_region_holds_its_own_counts() -> None:
    # Strictly falling in gains and rising in losses: {statistic <= cut} is a monotone region, and the
    # p-value of observed counts is the size of a region that holds them.
    for n, floor in ((40, 0.95), (300, 0.9), (300, 1.05)):
        losses, gains = np.arange(n + 1)[:, None], np.arange(n + 1)[None, :]
        stat = np.where(losses + gains <= n, exact_floor.signed_root(losses, gains, n, floor=floor), np.nan)
        along_gains, along_losses = np.diff(stat, axis=1), np.diff(stat, axis=0)  # nan where a count cannot occur
        assert np.all(along_gains[~np.isnan(along_gains)] < 0)
        assert np.all(along_losses[~np.isnan(along_losses)] > 0)


def test_p_values_match_the_region_and_do_not_depend_on_what_ran_before() -> None:
    n, risk = 300, 0.05
    region = exact_region(n, floor=F, risk=risk)
    cells = [(lo, ga) for lo in range(0, 60, 3) for ga in range(0, 40, 2)]
    first = {c: exact_floor.floor_pvalue(*c, n - sum(c), floor=F) for c in cells}
    exact_floor._null_law.cache_clear()
    exact_floor.floor_pvalue(10, 5, 200, floor=F)
    assert {c: exact_floor.floor_pvalue(*c, n - sum(c), floor=F) for c in cells} == first
    for (lo, ga), pv in first.items():  # the rounded cut's region certifies a subset of {p <= risk}
        assert not region.certifies(lo, ga) or pv <= risk


def test_a_log_over_the_limit_takes_the_betting_test() -> None:
    rng = np.random.default_rng(2)
    n = EXACT_MAX_ROWS + 1
    p = rng.random(n)
    s = (rng.random(n) < 0.8).astype(float)
    w = np.where(rng.random(n) < p, s, 1 - s)
    assert certify_quality_floor(p, w, s, floor=F, risk=0.05).method == METHOD_BETTING
    small = certify_quality_floor(p[:500], w[:500], s[:500], floor=F, risk=0.05)
    assert small.method == METHOD_EXACT and small.certified and small.bound >= F
