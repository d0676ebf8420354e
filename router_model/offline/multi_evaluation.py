"""The cost-quality frontier as RouterBench draws it (Hu et al. 2024, arXiv 2403.12031), and AIQ.

Points are (total dollars, quality = mean pass) on the held-out rows that have every model's
outcome. Each single model is a point; mixing two routers (or two models) at random realises any
point on the segment between them, so a router's frontier is the non-decreasing convex hull of
its points, and the best fixed mix of two models is that hull over the single models' points.
AIQ (average quality for cost) = (1 / (c_max - c_min)) * integral of the hull from c_min to
c_max, the cost range of the single models; the hull is flat after its best point and 0 below
its cheapest point (a router cannot be cheaper than what it has measured).

Also: the oracle (per request the cheapest model that passes; the cheapest model when none
does) and random (a uniform random model per request, in expectation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BUDGET_FRACTIONS = (0.10, 0.25, 0.50)
Floats = Sequence[float] | np.ndarray
MATCH_TOLERANCE = 0.005  # "matches the best single model's quality" within half a point


def eval_rows(passed: np.ndarray) -> np.ndarray:
    """Rows with an outcome for every model (the frontier compares like with like)."""
    return ~np.isnan(passed).any(axis=1)


def single_points(passed: np.ndarray, cost: np.ndarray, models: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": m, "cost": float(cost[:, j].sum()), "quality": float(passed[:, j].mean())}
            for j, m in enumerate(models)]


def hull(cost: Floats, quality: Floats) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper convex hull of the points, by increasing cost."""
    pts = sorted(set(zip(map(float, cost), map(float, quality))), key=lambda p: (p[0], -p[1]))
    # Non-decreasing: drop points dominated by a cheaper point of at least the same quality.
    front: list[tuple[float, float]] = []
    for c, q in pts:
        if front and q <= front[-1][1]:
            continue
        front.append((c, q))
    up: list[tuple[float, float]] = []
    for p in front:
        while len(up) >= 2:
            (c1, q1), (c2, q2) = up[-2], up[-1]
            if (q2 - q1) * (p[0] - c1) <= (p[1] - q1) * (c2 - c1):
                up.pop()
            else:
                break
        up.append(p)
    return np.array([p[0] for p in up]), np.array([p[1] for p in up])


def hull_at(hc: np.ndarray, hq: np.ndarray, c: float) -> float:
    """The hull's quality at cost c (0 below its cheapest vertex, flat after its last)."""
    if len(hc) == 0 or c < hc[0] - 1e-15:
        return 0.0
    return float(np.interp(c, hc, hq))


def aiq(cost: Floats, quality: Floats, *, c_min: float, c_max: float) -> float:
    """Area under the non-decreasing convex hull over [c_min, c_max], divided by the range."""
    hc, hq = hull(cost, quality)
    if len(hc) == 0:
        return 0.0
    if c_max <= c_min:
        return hull_at(hc, hq, c_max)
    lo = max(c_min, float(hc[0]))  # 0 below the hull's cheapest vertex
    if lo >= c_max:
        return 0.0
    grid = np.unique(np.concatenate([[lo, c_max], hc[(hc > lo) & (hc < c_max)]]))
    vals = np.interp(grid, hc, hq)
    return float(np.sum(0.5 * (vals[1:] + vals[:-1]) * np.diff(grid)) / (c_max - c_min))


def oracle_point(passed: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    """Per request, the cheapest model (by its own dollars) that passes; the cheapest one when none does."""
    pass_cost = np.where(passed >= 0.5, cost, np.inf)
    pick = np.where(np.isfinite(pass_cost.min(axis=1)), pass_cost.argmin(axis=1), cost.argmin(axis=1))
    rows = np.arange(len(passed))
    return {"cost": float(cost[rows, pick].sum()), "quality": float(passed[rows, pick].mean())}


def random_point(passed: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    return {"cost": float(cost.sum(axis=1).mean() * len(cost) / cost.shape[1]), "quality": float(passed.mean())}


def frontier_figures(cost: np.ndarray, quality: np.ndarray, best: dict[str, Any], *, c_min: float,
                     c_max: float) -> dict[str, Any]:
    """A frontier's figures against the best single model: cost at its quality, quality at budgets, AIQ.

    Both the measured operating points (`points`: a router setting that was run) and the hull
    (mixing two settings at random) are given.
    """
    hc, hq = hull(cost, quality)
    qb, cb = best["quality"], best["cost"]
    out: dict[str, Any] = {"aiq": aiq(cost, quality, c_min=c_min, c_max=c_max)}
    for label, target in (("cost_at_best_quality", qb), ("cost_at_best_quality_within_0.005", qb - MATCH_TOLERANCE)):
        ok = cost[quality >= target - 1e-12]
        out[f"{label}_points"] = float(ok.min() / cb) if len(ok) else float("nan")
        hv = hc[hq >= target - 1e-12]
        if len(hv) == 0:
            out[f"{label}_hull"] = float("nan")
        else:
            k = int(np.argmax(hq >= target - 1e-12))
            if k == 0:
                out[f"{label}_hull"] = float(hc[0] / cb)
            else:  # interpolate on the segment that crosses the target
                c0, c1, q0, q1 = hc[k - 1], hc[k], hq[k - 1], hq[k]
                out[f"{label}_hull"] = float((c0 + (target - q0) * (c1 - c0) / (q1 - q0)) / cb)
    for f in BUDGET_FRACTIONS:
        budget = f * cb
        ok = quality[cost <= budget + 1e-12]
        out[f"quality_at_{int(f * 100)}pct_cost_points"] = float(ok.max()) if len(ok) else float("nan")
        out[f"quality_at_{int(f * 100)}pct_cost_hull"] = hull_at(hc, hq, budget)
    return out


def evaluate_multi(
    models: Sequence[str],
    passed: np.ndarray,
    cost: np.ndarray,
    *,
    router_sweeps: dict[str, Any],
    chosen: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The held-out report: singles, best two-model mix, oracle, random and each router sweep's figures.

    `router_sweeps` maps a label to an object with `cost` and `quality` arrays (a `Sweep`);
    `chosen` is the operating point the validation goal picked, run on these rows.
    """
    keep = eval_rows(passed)
    Y, C = passed[keep], cost[keep]
    singles = single_points(Y, C, models)
    best = max(singles, key=lambda s: (s["quality"], -s["cost"]))
    c_min, c_max = min(s["cost"] for s in singles), max(s["cost"] for s in singles)
    sc, sq = np.array([s["cost"] for s in singles]), np.array([s["quality"] for s in singles])
    report: dict[str, Any] = {
        "n": int(keep.sum()),
        "n_excluded_missing_outcomes": int((~keep).sum()),
        "models": list(models),
        "singles": singles,
        "best_single": best,
        "cost_range": [c_min, c_max],
        "oracle": oracle_point(Y, C),
        "random": random_point(Y, C),
        "best_two_model_mix": frontier_figures(sc, sq, best, c_min=c_min, c_max=c_max),
        "routers": {},
    }
    best_under = {}
    for f in BUDGET_FRACTIONS:
        under = [s for s in singles if s["cost"] <= f * best["cost"] + 1e-12]
        best_under[f"{int(f * 100)}pct"] = max(under, key=lambda s: s["quality"]) if under else None
    report["best_single_under_budget"] = best_under
    for label, sw in router_sweeps.items():
        report["routers"][label] = frontier_figures(np.asarray(sw.cost), np.asarray(sw.quality), best, c_min=c_min, c_max=c_max)
    if chosen is not None:
        report["chosen"] = {**chosen, "cost_vs_best": chosen["cost"] / best["cost"],
                            "quality_vs_best": chosen["quality"] / best["quality"]}
    return report


def format_report(rep: dict[str, Any]) -> str:
    """The held-out report as a few lines of text."""
    b = rep["best_single"]
    lines = [f"held-out (n={rep['n']}, {rep['n_excluded_missing_outcomes']} rows without every outcome left out): "
             f"best single {b['name']} quality {b['quality']:.3f} at ${b['cost']:.4f}"]
    lines.append(f"  oracle {rep['oracle']['quality']:.3f} at {rep['oracle']['cost'] / b['cost']:.1%} of its cost; "
                 f"random {rep['random']['quality']:.3f} at {rep['random']['cost'] / b['cost']:.1%}")
    rows = {"best 2-model mix": rep["best_two_model_mix"], **rep["routers"]}
    lines.append(f"  {'frontier':<22} {'AIQ':>6} {'q@10%':>6} {'q@25%':>6} {'q@50%':>6} {'cost@best q':>11} {'(-0.5pt)':>9}")
    for name, f in rows.items():
        lines.append(
            f"  {name:<22} {f['aiq']:6.3f} {f['quality_at_10pct_cost_hull']:6.3f} {f['quality_at_25pct_cost_hull']:6.3f} "
            f"{f['quality_at_50pct_cost_hull']:6.3f} {f['cost_at_best_quality_hull']:11.1%} "
            f"{f['cost_at_best_quality_within_0.005_hull']:9.1%}"
        )
    if "chosen" in rep:
        c = rep["chosen"]
        lines.append(f"  chosen on validation: {c.get('kind')}={c.get('value'):.4g} -> quality {c['quality']:.3f} "
                     f"({c['quality_vs_best']:.1%} of best) at {c['cost_vs_best']:.1%} of its cost")
    return "\n".join(lines)


def finite(v: Any) -> Any:
    """A JSON-safe copy: NaN and infinities become None (metadata.json, evaluation.json, MLflow)."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
