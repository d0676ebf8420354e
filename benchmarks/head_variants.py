"""What else was tried to raise the certified cheap share of a small log (issue 26), paired on the same draws.

Each draw takes a labelled log of n rows from routellm-mmlu's pool, splits it 70/15/15 by prompt text as
the pipeline does, and certifies the quality floor with the default betting certificate on cross-fitted
scores; the served threshold is applied to the final head's scores of the disjoint test set. Variants
change one thing against `pipeline` (`--threshold-rows oof`: logreg_c0.1 with sklearn's sigmoid
calibration, scores cross-fitted over train + validation, the head refit there):

  every-row        `--threshold-rows all`, the default (training/threshold.py every_row_stage): five
                   folds over all n rows (the test split included), the head refit on all of them
  test-as-fold     the test split as one more fold instead, scored by the train + validation head
  uncalibrated     a plain LogisticRegression(C=0.1) on the joint target, no calibration
  temperature      the same with one temperature fitted on cross-validated logits
  fold-ensemble    the test set scored by the mean of the five fold heads instead of a refit
  gain-order       rows ordered by P(cheap only) - P(strong only) as well as P(cheap ok)

Besides the cheap share on the test set it records the share routed cheap among the labelled rows at the
certified threshold: when the test share runs ahead of it, the final head's scores are more spread than
the cross-fitted ones and the threshold sends more rows cheap than it certified.

    python benchmarks/head_variants.py --sizes 1000 --draws 100 --workers 2
    python benchmarks/head_variants.py --sizes 3000 --draws 60 --workers 2

Writes benchmarks/results/head_variants.json (sizes run separately are kept side by side). Needs
../shared/data and the cached embeddings.
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

import certificate_simulation as sim
import numpy as np

from training.risk import certify_quality_floor

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "head_variants.json"
VARIANTS = ("pipeline", "every-row", "test-as-fold", "uncalibrated", "temperature", "fold-ensemble", "gain-order")
C = 0.1


def _temperature_lr(X: np.ndarray, y: np.ndarray) -> Any:
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z = cross_val_predict(LogisticRegression(C=C, max_iter=3000), X, y, method="decision_function",
                          cv=StratifiedKFold(5, shuffle=True, random_state=0))

    def nll(log_t: float) -> float:
        a = z / np.exp(log_t)
        a = a - a.max(axis=1, keepdims=True)
        logp = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    t = float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))
    model = LogisticRegression(C=C, max_iter=3000).fit(X, y)
    model.coef_, model.intercept_ = model.coef_ / t, model.intercept_ / t
    return model


def _fit(variant: str, X: np.ndarray, w: np.ndarray, s: np.ndarray, head_name: str) -> Any:
    """X -> (p_cheap_ok, p_strong_ok) of the variant's head fitted on these rows."""
    from sklearn.linear_model import LogisticRegression

    from training.head import _factory, make_target, p_cheap_ok, p_strong_ok

    target = make_target("joint")
    y = target.labels(w >= 0.5, s >= 0.5)
    if variant == "uncalibrated":
        model: Any = LogisticRegression(C=C, max_iter=3000).fit(X, y)
    elif variant == "temperature":
        model = _temperature_lr(X, y)
    else:
        model = _factory(head_name, "sigmoid", 0, n_min_class=int(np.bincount(y).min()))
        model.fit(X, y)
    return lambda Z: (p_cheap_ok(model, Z, target), p_strong_ok(model, Z, target))


def _product_stages(X: np.ndarray, texts: list[str], w: np.ndarray, s: np.ndarray, cc: np.ndarray, cs: np.ndarray,
                    tr: np.ndarray, va: np.ndarray, te: np.ndarray, *, floor: float, risk: float) -> dict[str, Any]:
    """`pipeline` (threshold_stage, rows "oof") and `every-row` (then every_row_stage), as router-train runs them."""
    from training.head import make_target, select_head
    from training.threshold import Goal, every_row_stage, threshold_stage

    outcomes = {"cheap_passed": w, "strong_passed": s, "cost_cheap": cc, "cost_strong": cs}
    goal = Goal.quality_floor(floor, risk)
    head = select_head(X, w, s, train_rows=tr, val_rows=va, target=make_target("joint"), names=(sim._FG.HEAD,),
                       say=lambda _: None)
    stage = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, rows="oof", goal=goal)
    final = every_row_stage(stage, X, texts, **outcomes, train_rows=tr, val_rows=va, test_rows=te, goal=goal)
    return {"pipeline": stage, "every-row": final}


def _variant_scores(variant: str, X: np.ndarray, w: np.ndarray, s: np.ndarray, texts: list[str], tr: np.ndarray,
                    va: np.ndarray, te: np.ndarray, X_test: np.ndarray,
                    head_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the certified rows, their cross-fitted p_cheap_ok, the final head's p_cheap_ok of the test set)."""
    from router_model.offline.split import group_kfold, normalize_prompt

    lab = np.concatenate([tr, va])
    folds = group_kfold([normalize_prompt(texts[i]) for i in lab], k=5, seed=0)
    pc, ps = np.full(len(lab), np.nan), np.full(len(lab), np.nan)
    members = []
    for a, b in folds:
        score = _fit(variant, X[lab][a], w[lab][a], s[lab][a], head_name)
        pc[b], ps[b] = score(X[lab][b])
        members.append(score)
    if variant == "fold-ensemble":
        tc, ts = np.mean([m(X_test) for m in members], axis=0)
    elif variant == "test-as-fold":
        pc_te, _ = _fit(variant, X[lab], w[lab], s[lab], head_name)(X[te])
        pc = np.concatenate([pc, pc_te])
        lab = np.concatenate([lab, te])
        tc, ts = _fit(variant, X[lab], w[lab], s[lab], head_name)(X_test)
    else:
        tc, ts = _fit(variant, X[lab], w[lab], s[lab], head_name)(X_test)
    if variant == "gain-order":  # in [0, 1]: higher = the cheap model's expected gain over its loss
        pc, tc = (1.0 + pc - ps) / 2.0, (1.0 + tc - ts) / 2.0
    return lab, pc, tc


def _one(job: tuple[int, int, float, float]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from router_model.offline.split import assign_splits, normalize_prompt

    n, seed, floor, risk = job
    d, fg = sim._D, sim._FG
    warnings.filterwarnings("ignore")
    out: dict[str, Any] = {}
    with threadpool_limits(1):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(d.pool, size=n, replace=False))
        texts = [d.texts[i] for i in rows]
        X, w, s = d.X[rows], d.w[rows], d.s[rows]
        split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
        tr, va, te = (np.flatnonzero(split == k) for k in ("train", "val", "test"))
        product = _product_stages(X, texts, w, s, d.cc[rows], d.cs[rows], tr, va, te, floor=floor, risk=risk)
        for variant in VARIANTS:
            if variant in product:  # the pipeline's own stages
                stage = product[variant]
                pc, threshold = stage.scores, stage.choice.threshold
                tc = stage.head.p_cheap_ok(d.X[d.test])
            else:
                lab, pc, tc = _variant_scores(variant, X, w, s, texts, tr, va, te, d.X[d.test], fg.HEAD)
                threshold = certify_quality_floor(pc, w[lab], s[lab], floor=floor, risk=risk).threshold
            r = fg.on_test(d, tc, threshold)
            out[variant] = {**r, "held": float(r["quality_vs_strong"] >= floor),
                            "labelled_cheap_share": float(np.mean(pc >= threshold))}
    return out


def run(*, size: int, draws: int, floor: float, risk: float, seed: int, workers: int) -> dict[str, Any]:
    seeds = np.random.default_rng([seed, size, 13]).integers(1 << 31, size=draws)
    jobs = [(size, int(x), floor, risk) for x in seeds]
    t0 = time.perf_counter()
    if workers <= 1:
        done = [_one(j) for j in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = pool.map(_one, jobs, chunksize=1)
    base = np.array([r["pipeline"]["cheap_share"] for r in done])
    res: dict[str, Any] = {"draws": draws, "seconds": time.perf_counter() - t0, "variants": {}}
    print(f"routellm-mmlu n={size} ({draws} draws, {res['seconds']:.0f}s):")
    for v in VARIANTS:
        share = np.array([r[v]["cheap_share"] for r in done])
        diff = share - base
        row = {"cheap_share": float(share.mean()),
               "vs_pipeline": float(diff.mean()), "vs_pipeline_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
               "labelled_cheap_share": float(np.mean([r[v]["labelled_cheap_share"] for r in done])),
               "held": float(np.mean([r[v]["held"] for r in done])),
               "quality_vs_strong": float(np.mean([r[v]["quality_vs_strong"] for r in done])),
               "cost_saved": float(np.mean([r[v]["cost_saved"] for r in done]))}
        res["variants"][v] = row
        print(f"  {v:<14} cheap {row['cheap_share']:6.1%} ({row['vs_pipeline']:+.1%} +- {row['vs_pipeline_se']:.1%})"
              f"  labelled {row['labelled_cheap_share']:6.1%}  held {row['held']:6.1%}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--risk", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    sim._FG, sim._D = sim._mmlu_data()
    result = json.loads(args.out.read_text()) if args.out.exists() else {"about": __doc__.split("\n")[0], "sizes": {}}
    for size in [int(x) for x in args.sizes.split(",") if x.strip()]:
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        res = run(size=size, draws=args.draws, floor=args.floor, risk=args.risk, seed=args.seed, workers=args.workers)
        res["conditions"] = {"floor": args.floor, "risk": args.risk, "seed": args.seed, "workers": args.workers,
                             "cpus": os.cpu_count(), "loadavg_before": load_before,
                             "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        result["sizes"][str(size)] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
