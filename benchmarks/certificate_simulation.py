"""Do the exact and betting certificates keep the promise, and what do they buy over Clopper-Pearson?

Three parts, each comparing the certificates of training/risk.py on the same draws
(docs/guarantee.md, "Measured: the certificates side by side"):

  synthetic      a large synthetic population with KNOWN truth (500,000 rows; each labelled log is
                 drawn with replacement from it, so the rows are exactly i.i.d. from it and the true
                 quality / spend of any threshold is computed on the whole population, not estimated).
                 Quality floor and cost-per-request budget; violation = the served threshold's true
                 quality < F x always-strong (or true mean spend > budget).
  mmlu-fixed     routellm-mmlu, real scores: the `logreg_c0.1` head is fitted once on half of the
                 prompts (split by text); the other half is the population. Labelled logs are drawn
                 with replacement from it, so "held" is exact for that population (no finite test set).
  mmlu-pipeline  the pipeline's own stages (70/15/15 split, cross-fitted scores over train +
                 validation, then cross-fitted again over every row, the test split in the folds:
                 `--threshold-rows all`, the default; the head refit on every row), both
                 certificates on the same cross-fitted scores, scored on the disjoint test set
                 (finite, so "held" is itself an estimate).

    python benchmarks/certificate_simulation.py --part synthetic --draws 2000
    python benchmarks/certificate_simulation.py --part mmlu-fixed --draws 1000
    python benchmarks/certificate_simulation.py --part mmlu-pipeline --draws 100 --sizes 1000,3000

Each part is merged into benchmarks/results/certificate_simulation.json (with the load average and
the time taken). Needs ../shared/data and the cached embeddings for the mmlu parts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from training.risk import CERTIFICATES, certify_budget, certify_quality_floor

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "certificate_simulation.json"


# ---------------------------------------------------------------- populations with known truth


class Population:
    """Rows (p, cheap passed, strong passed, cheap cost, strong cost); the truth of any threshold is exact."""

    def __init__(self, p: np.ndarray, w: np.ndarray, s: np.ndarray, cc: np.ndarray, cs: np.ndarray) -> None:
        self.p, self.w, self.s, self.cc, self.cs = p, w, s, cc, cs
        order = np.argsort(-p, kind="stable")
        self._sorted_p = p[order]
        self._cum_q = np.concatenate([[0.0], np.cumsum((w - s)[order])])
        self._cum_c = np.concatenate([[0.0], np.cumsum((cc - cs)[order])])

    def at(self, threshold: float) -> dict[str, float]:
        """True quality / always-strong, cheap share and mean spend of routing cheap iff p >= threshold."""
        n = len(self.p)
        k = int(np.searchsorted(-self._sorted_p, -threshold, side="right"))
        q = (self.s.sum() + self._cum_q[k]) / n
        cost = (self.cs.sum() + self._cum_c[k]) / n
        return {"quality_vs_strong": float(q / self.s.mean()), "cheap_share": k / n, "cost": float(cost),
                "cost_saved": float(1 - cost / self.cs.mean())}


def synthetic_population(size: int = 500_000, seed: int = 11) -> Population:
    """Shaped like routellm-mmlu (strong passes 0.81, cheap 0.68): the lower p, the likelier the cheap
    model fails where the strong one passes; a few gains where the strong model fails."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.2, 1.0, size)
    s = (rng.random(size) < 0.81).astype(float)
    loss = (rng.random(size) < 0.75 * (1 - p) ** 1.3) & (s == 1)
    gain = (rng.random(size) < 0.25 * p) & (s == 0)
    w = np.where(loss, 0.0, np.where(gain, 1.0, s))
    tokens = rng.lognormal(5.5, 0.8, size)
    cc = 0.15e-6 * tokens + 0.6e-6 * 200  # $ per request, cheap (gpt-4o-mini-like list prices)
    cs = 2.5e-6 * tokens + 10e-6 * 200  # strong (gpt-4o-like)
    return Population(p, w, s, cc, cs)


_POP: Population | None = None


def _one(job: tuple[str, int, int, float, float]) -> dict[str, Any]:
    goal, n, seed, value, risk = job
    assert _POP is not None
    pop = _POP
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pop.p), n)  # with replacement: exactly i.i.d. from the population
    p, w, s, cc, cs = pop.p[idx], pop.w[idx], pop.s[idx], pop.cc[idx], pop.cs[idx]
    out: dict[str, Any] = {}
    for cert in CERTIFICATES:
        if goal == "quality_floor":
            rc = certify_quality_floor(p, w, s, floor=value, risk=risk, certificate=cert)
            truth = pop.at(rc.threshold)
            ok = truth["quality_vs_strong"] >= value - 1e-12
        else:
            rc = certify_budget(p, w, s, spend_cheap=cc, spend_strong=cs, budget=value, risk=risk, certificate=cert)
            truth = pop.at(rc.threshold)
            ok = truth["cost"] <= value + 1e-15
        out[cert] = {**truth, "held": float(ok), "certified": float(rc.certified)}
    return out


def _map(jobs: list[Any], workers: int) -> list[Any]:
    if workers <= 1:
        return [_one(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_one, jobs, chunksize=8)


def summarise(draws: list[dict[str, Any]], risk: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cert in CERTIFICATES:
        rows = [d[cert] for d in draws]
        held = np.array([r["held"] for r in rows])
        viol = 1 - held.mean()
        out[cert] = {
            "violation_rate": float(viol),
            # one-sided 95% upper bound of the violation rate over these draws (Clopper-Pearson)
            "violation_upper95": float(_cp_upper(int(round((1 - held).sum())), len(held))),
            "floor_or_budget_held": float(held.mean()),
            "certified": float(np.mean([r["certified"] for r in rows])),
            "cheap_share": float(np.mean([r["cheap_share"] for r in rows])),
            "cost_saved": float(np.mean([r["cost_saved"] for r in rows])),
            "quality_vs_strong_mean": float(np.mean([r["quality_vs_strong"] for r in rows])),
            "quality_vs_strong_min": float(np.min([r["quality_vs_strong"] for r in rows])),
        }
    out["draws"] = len(draws)
    out["risk"] = risk
    return out


def _cp_upper(k: int, n: int, delta: float = 0.05) -> float:
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(1 - delta, k + 1, n - k))


def run_population(pop: Population, name: str, *, sizes: list[int], draws: int, floor: float, risk: float,
                   budget: float | None, seed: int, workers: int) -> dict[str, Any]:
    global _POP
    _POP = pop
    res: dict[str, Any] = {"population_rows": len(pop.p), "strong_pass": float(pop.s.mean()),
                           "cheap_pass": float(pop.w.mean()), "goals": {}}
    goals = [("quality_floor", floor)] + ([("max_cost_per_request", budget)] if budget else [])
    for goal, value in goals:
        res["goals"][f"{goal}={value:g}"] = per = {}
        for n in sizes:
            seeds = np.random.default_rng([seed, n, len(goal)]).integers(1 << 31, size=draws)
            t0 = time.perf_counter()
            done = _map([(goal, n, int(x), value, risk) for x in seeds], workers)
            summ = summarise(done, risk)
            summ["seconds"] = time.perf_counter() - t0
            per[str(n)] = summ
            print(f"  {name} {goal}={value:g} n={n} ({draws} draws, {summ['seconds']:.0f}s):", flush=True)
            for cert in CERTIFICATES:
                r = summ[cert]
                print(f"    {cert:<16} violated {r['violation_rate']:6.2%} (95% upper {r['violation_upper95']:.2%})  "
                      f"certified {r['certified']:6.1%}  cheap {r['cheap_share']:6.1%}  saved {r['cost_saved']:6.1%}  "
                      f"q/strong mean {r['quality_vs_strong_mean']:.3f} min {r['quality_vs_strong_min']:.3f}",
                      flush=True)
    return res


# ---------------------------------------------------------------- routellm-mmlu


def _mmlu_data() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import floor_guarantee as fg

    from training.cache import default_cache_dir
    from training.embedding.export import export_embedder
    from training.embedding.onnx_embedder import OnnxEmbedder

    cache = default_cache_dir()
    embedder = OnnxEmbedder(export_embedder(cache_dir=cache), cache_dir=cache)
    d = fg.load("routellm-mmlu", embedder, 0.4)
    embedder.close()
    return fg, d


def mmlu_fixed_population(seed: int = 0) -> Population:
    """The head fitted on half of routellm-mmlu's prompts; the other half, scored by it, is the population."""
    from router_model.offline.split import assign_splits, normalize_prompt
    from training.head import make_target, select_head

    fg, d = _mmlu_data()
    n = len(d.texts)
    side = assign_splits([normalize_prompt(t) for t in d.texts], fractions=(0.4, 0.1, 0.5), seed=seed + 777)
    tr, va, pop = (np.flatnonzero(side == k) for k in ("train", "val", "test"))
    warnings.filterwarnings("ignore")
    head = select_head(d.X, d.w, d.s, train_rows=tr, val_rows=va, target=make_target("joint"), names=(fg.HEAD,),
                       say=lambda _: None)
    p = head.p_cheap_ok(d.X[pop])
    print(f"routellm-mmlu: {n} rows; head {fg.HEAD} fitted on {len(tr)} (+{len(va)} validation), population "
          f"{len(pop)} rows", flush=True)
    return Population(p, d.w[pop], d.s[pop], d.cc[pop], d.cs[pop])


_FG: Any = None
_D: Any = None


def _pipeline_one(job: tuple[int, int, float, float]) -> dict[str, Any]:
    """One log through the pipeline's own stages (threshold_stage over train + validation, then
    every_row_stage: the default `--threshold-rows all`), each certificate on the same cross-fitted
    scores, the head refit on every row scored on the disjoint test set."""
    from threadpoolctl import threadpool_limits

    from router_model.offline.split import assign_splits, normalize_prompt
    from training.head import make_target, select_head
    from training.threshold import Goal, every_row_stage, threshold_stage

    n, seed, floor, risk = job
    d = _D
    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {}
    with threadpool_limits(1):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(d.pool, size=n, replace=False))
        texts = [d.texts[i] for i in rows]
        X, w, s, cc, cs = d.X[rows], d.w[rows], d.s[rows], d.cc[rows], d.cs[rows]
        split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
        tr, va, te = (np.flatnonzero(split == k) for k in ("train", "val", "test"))
        head = select_head(X, w, s, train_rows=tr, val_rows=va, target=make_target("joint"), names=(_FG.HEAD,),
                           say=lambda _: None)
        outcomes = {"cheap_passed": w, "strong_passed": s, "cost_cheap": cc, "cost_strong": cs}
        goal = Goal.quality_floor(floor, risk)
        stage = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, rows="oof", goal=goal)
        final = every_row_stage(stage, X, texts, **outcomes, train_rows=tr, val_rows=va, test_rows=te, goal=goal)
        assert final.scores is not None and final.labelled_rows is not None
        p_test = final.head.p_cheap_ok(d.X[d.test])
        lab = final.labelled_rows
    for cert in CERTIFICATES:  # the same cross-fitted scores of every row, each certificate
        rc = certify_quality_floor(final.scores, w[lab], s[lab], floor=floor, risk=risk, certificate=cert)
        r = _FG.on_test(d, p_test, rc.threshold)
        out[cert] = {**r, "held": float(r["quality_vs_strong"] >= floor), "certified": float(rc.certified),
                     "threshold_rows": final.rows}
    return out


def run_pipeline(*, sizes: list[int], draws: int, floor: float, risk: float, seed: int, workers: int) -> dict[str, Any]:
    global _FG, _D
    _FG, _D = _mmlu_data()
    res: dict[str, Any] = {"n_pool": int(len(_D.pool)), "n_test": int(len(_D.test)), "head": _FG.HEAD, "sizes": {}}
    for n in sizes:
        seeds = np.random.default_rng([seed, n, 13]).integers(1 << 31, size=draws)
        t0 = time.perf_counter()
        jobs = [(n, int(x), floor, risk) for x in seeds]
        if workers <= 1:
            done = [_pipeline_one(j) for j in jobs]
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                done = pool.map(_pipeline_one, jobs, chunksize=1)
        summ = summarise(done, risk)
        summ["seconds"] = time.perf_counter() - t0
        res["sizes"][str(n)] = summ
        print(f"  routellm-mmlu pipeline n={n} ({draws} draws, {summ['seconds']:.0f}s):", flush=True)
        for cert in CERTIFICATES:
            r = summ[cert]
            print(f"    {cert:<16} held {r['floor_or_budget_held']:6.1%}  cheap {r['cheap_share']:6.1%}  saved "
                  f"{r['cost_saved']:6.1%}  q/strong min {r['quality_vs_strong_min']:.3f}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("synthetic", "mmlu-fixed", "mmlu-pipeline"), required=True)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--sizes", default="300,1000,3000")
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--risk", type=float, default=0.05)
    ap.add_argument("--budget", type=float, default=None,
                    help="synthetic part: also a cost-per-request budget in $ (default: 40%% of always-strong)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    t0 = time.perf_counter()
    common = {"sizes": sizes, "draws": args.draws, "floor": args.floor, "risk": args.risk, "seed": args.seed,
              "workers": args.workers}
    if args.part == "synthetic":
        pop = synthetic_population()
        budget = args.budget or round(0.4 * float(pop.cs.mean()), 7)
        res = run_population(pop, "synthetic", budget=budget, **common)
    elif args.part == "mmlu-fixed":
        res = run_population(mmlu_fixed_population(args.seed), "routellm-mmlu (fixed head)", budget=None, **common)
    else:
        res = run_pipeline(**common)
    res["conditions"] = {**common, "cpus": os.cpu_count(), "loadavg_before": load_before,
                         "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                         "seconds": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.part == "mmlu-pipeline" and args.part in result:  # sizes run separately are kept side by side
        res["sizes"] = {**result[args.part].get("sizes", {}), **res["sizes"]}
        res["conditions_by_size"] = {**result[args.part].get("conditions_by_size", {}),
                                     **{str(n): res["conditions"] for n in sizes}}
    elif args.part == "mmlu-pipeline":
        res["conditions_by_size"] = {str(n): res["conditions"] for n in sizes}
    result[args.part] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} [{args.part}] ({res['conditions']['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
