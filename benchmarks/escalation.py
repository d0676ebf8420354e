"""Route, then escalate on the answer score, under the certified floor (issue 26, lever 2).

Two public files with the cheap model's own answers (their raw files in ../shared/data):
  mmlu-pro     gemini-1.5-flash-002 (cheap) -> gpt-4o-2024-05-13 (strong), the raw MMLU-Pro outputs;
  routerbench  gpt-3.5-turbo-1106 -> gpt-4-1106-preview, the raw RouterBench responses (ARC,
               Winogrande: single-letter answers; MBPP: code).
The prompts are split by text into a pool (60%) and a disjoint test set (40%). Each draw takes a labelled log of N rows from the pool and
runs the pipeline's stages on cached embeddings: the 70/15/15 split, the router head
(`logreg_c0.1`), cross-fitted scores over train + validation, the answer score cross-fitted over
the same folds (training/escalation.py), then three certified rules at floor 0.95, risk 0.05:

  route-cp         routing alone, Clopper-Pearson certificate (the certificate before issue 26)
  route-betting    routing alone, betting certificate (router-train --escalation off)
  route+escalate   routing alone or the cascade, each at risk 0.025, the cheaper served
                   (router-train's default when the log kept the cheap answers)

scored on the test set with the refit heads: held (quality >= 0.95 x always-strong on the test
set), cost / always-strong, quality, cheap share, escalated share, and the wait an escalation
adds (the cheap answer's generation time, ESTIMATED from its length by
router_model/answer_score.py `estimated_wait_s`: 0.4 s + characters / 4 tokens at 150 tokens/s;
the logs hold no latencies).

    python benchmarks/escalation.py [--data mmlu-pro,routerbench] [--sizes 3000,6000] [--draws 200] [--workers 2]

(--sizes applies to every file; sizes above a file's pool are left out.)

Writes benchmarks/results/escalation.json. Needs ../shared/data (skips otherwise); embeddings cached.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "escalation.json"
CHEAP_OUTPUTS = {"mmlu-pro": "mmlu-pro/raw/model_outputs_zips/model_outputs_gemini-1.5-flash-002_5shots.zip",
                 "routerbench": "routerbench-subset/raw/routerbench_zs"}
RULES = ("route-cp", "route-betting", "route+escalate")

_STATE: Any = None


def _mmlu_pro_answers(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as z:
        items = json.loads(z.read(z.namelist()[0]))
    return {f"mmlu-pro-{it['question_id']}": it.get("model_outputs") or "" for it in items}


def _routerbench_answers(folder: Path, model: str) -> dict[str, str]:
    """The raw RouterBench CSVs: `<model>|model_response` holds a Python list literal of the answer."""
    import ast
    import csv
    import gzip

    csv.field_size_limit(1 << 30)
    out: dict[str, str] = {}
    for f in sorted(folder.glob("*.csv.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                raw = row.get(f"{model}|model_response") or ""
                try:
                    value = ast.literal_eval(raw)
                except (ValueError, SyntaxError):
                    value = raw
                answer = value[0] if isinstance(value, list) and value else value
                out["routerbench-" + row["sample_id"].replace("winograde", "winogrande")] = str(answer or "")
    return out


def load(name: str) -> Any:
    import floor_guarantee as fg

    from router_model.answer_features import answer_feature_matrix  # noqa: F401 - imported for the workers
    from router_model.offline.log import ReadOptions, read_logs
    from training.cache import default_cache_dir
    from training.data.public import shared_data_dir
    from training.embedding.export import export_embedder
    from training.embedding.onnx_embedder import OnnxEmbedder

    raw = shared_data_dir() / CHEAP_OUTPUTS[name]
    if not raw.exists():
        return None
    cache = default_cache_dir()
    embedder = OnnxEmbedder(export_embedder(cache_dir=cache), cache_dir=cache)
    d = fg.load(name, embedder, 0.4)
    embedder.close()
    rel, cheap, strong = fg.FILES[name]
    read = read_logs([shared_data_dir() / rel], models=(cheap, strong), options=ReadOptions(skip_invalid=True))
    by_id = _mmlu_pro_answers(raw) if name == "mmlu-pro" else _routerbench_answers(raw, cheap)
    answers = [by_id.get(r.id, "") for r in read.records]
    print(f"{name}: cheap answers for {sum(bool(a) for a in answers)} of {len(answers)} rows", flush=True)
    return fg, d, answers


def one_draw(job: tuple[int, int, float, float]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from router_model.answer_score import estimated_wait_s
    from router_model.offline.split import assign_splits, group_kfold, normalize_prompt
    from training.escalation import certify_route_and_escalate, cross_fitted_scores, fit_answer_head, score_matrix, served
    from training.head import make_target, out_of_fold_p, refit_head, select_head
    from training.risk import certify_quality_floor

    n, seed, floor, risk = job
    fg, d, answers = _STATE
    warnings.filterwarnings("ignore")
    with threadpool_limits(1):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(d.pool, size=n, replace=False))
        texts = [d.texts[i] for i in rows]
        X, w, s, cc, cs = d.X[rows], d.w[rows], d.s[rows], d.cc[rows], d.cs[rows]
        split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
        tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
        head = select_head(X, w, s, train_rows=tr, val_rows=va, target=make_target("joint"), names=(fg.HEAD,),
                           say=lambda _: None)
        lab = np.concatenate([tr, va])
        folds = group_kfold([normalize_prompt(texts[i]) for i in lab], k=5, seed=0)
        lw, ls, lcc, lcs = w[lab], s[lab], cc[lab], cs[lab]
        p = out_of_fold_p(head, X[lab], cheap_passed=lw, strong_passed=ls, folds=folds)
        refit = refit_head(head, X[lab], cheap_passed=lw, strong_passed=ls)
        target = ((lw < 0.5) & (ls >= 0.5)).astype(int)
        F = score_matrix([answers[rows[i]] for i in lab], p)
        q = cross_fitted_scores(F, target, folds=folds)
        answer_head = fit_answer_head(F, target)
        te = d.test
        p_test = refit.p_cheap_ok(d.X[te])
        q_test = answer_head.predict(score_matrix([answers[i] for i in te], p_test))
    test = {"cheap_passed": d.w[te], "strong_passed": d.s[te], "cost_cheap": d.cc[te], "cost_strong": d.cs[te]}
    out: dict[str, Any] = {}
    for rule, cert in (("route-cp", "clopper-pearson"), ("route-betting", "betting")):
        rc = certify_quality_floor(p, lw, ls, floor=floor, risk=risk, certificate=cert)
        out[rule] = {**served(p_test, q_test, threshold=rc.threshold, answer_threshold=None, **test),
                     "family": "route"}
    best, _ = certify_route_and_escalate(p, q, cheap_passed=lw, strong_passed=ls, cost_cheap=lcc, cost_strong=lcs,
                                         floor=floor, risk=risk, certificate="betting")
    t = best.threshold if best else 2.0
    u = best.answer_threshold if best else None
    r = served(p_test, q_test, threshold=t, answer_threshold=u, **test)
    escalated = (p_test >= t) & (q_test >= u) if u is not None else np.zeros(len(te), dtype=bool)
    chars = np.array([len(answers[i]) for i in te], dtype=float)[escalated]
    wait = estimated_wait_s(chars / 4.0)
    out["route+escalate"] = {**r, "family": best.family if best else "none",
                             "wait_p50": float(np.percentile(wait, 50)) if len(wait) else 0.0,
                             "wait_p99": float(np.percentile(wait, 99)) if len(wait) else 0.0}
    for rule in out:
        out[rule]["held"] = float(out[rule]["quality_vs_strong"] >= floor)
    return out


def summarise(draws: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import beta

    res: dict[str, Any] = {}
    for rule in RULES:
        rows = [d[rule] for d in draws]
        held = np.array([r["held"] for r in rows])
        k = int(round((1 - held).sum()))
        res[rule] = {
            "held": float(held.mean()),
            "violation_upper95": 1.0 if k >= len(held) else float(beta.ppf(0.95, k + 1, len(held) - k)),
            **{key: float(np.mean([r[key] for r in rows])) for key in
               ("cost_vs_strong", "quality_vs_strong", "cheap_share", "escalated_share")},
            "quality_vs_strong_min": float(np.min([r["quality_vs_strong"] for r in rows])),
            "families": {f: sum(r["family"] == f for r in rows) for f in {r["family"] for r in rows}},
        }
        if rule == "route+escalate":
            res[rule]["added_wait_p50_s"] = float(np.mean([r["wait_p50"] for r in rows]))
            res[rule]["added_wait_p99_s"] = float(np.mean([r["wait_p99"] for r in rows]))
    return res


def _run_sizes(name: str, sizes: list[int], out: dict[str, Any], args: argparse.Namespace) -> None:
    for n in sizes:
        seeds = np.random.default_rng([args.seed, n, 26]).integers(1 << 31, size=args.draws)
        jobs = [(n, int(x), args.floor, args.risk) for x in seeds]
        t1 = time.perf_counter()
        if args.workers <= 1:
            draws = [one_draw(j) for j in jobs]
        else:
            with multiprocessing.get_context("fork").Pool(args.workers) as pool:
                draws = pool.map(one_draw, jobs, chunksize=1)
        summ = summarise(draws)
        summ["draws"] = len(draws)
        summ["seconds"] = time.perf_counter() - t1
        out[str(n)] = summ
        print(f"{name} n={n} ({len(draws)} draws, {summ['seconds']:.0f}s):", flush=True)
        for rule in RULES:
            r = summ[rule]
            extra = (f"  escalated {r['escalated_share']:.1%}  added wait p50 {r['added_wait_p50_s']:.1f}s "
                     f"p99 {r['added_wait_p99_s']:.1f}s  families {r['families']}" if rule == "route+escalate" else "")
            print(f"  {rule:<15} held {r['held']:6.1%}  cost {r['cost_vs_strong']:.3f} of always-strong  quality "
                  f"{r['quality_vs_strong']:.3f} (min {r['quality_vs_strong_min']:.3f})  cheap {r['cheap_share']:.1%}"
                  + extra, flush=True)


def main(argv: list[str] | None = None) -> int:
    global _STATE
    from router_model.answer_score import ASSUMED_FIRST_TOKEN_S, ASSUMED_TOKENS_PER_S

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mmlu-pro,routerbench")
    ap.add_argument("--sizes", default="1500,3000,6000")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--risk", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"about": __doc__.split("\n\n")[0],
                              "latency_assumption": {"first_token_s": ASSUMED_FIRST_TOKEN_S,
                                                     "tokens_per_s": ASSUMED_TOKENS_PER_S, "tokens": "characters / 4"},
                              "data": {}}
    for name in [x.strip() for x in args.data.split(",") if x.strip()]:
        _STATE = load(name)
        if _STATE is None:
            print(f"{name}: skipped, its raw model outputs in ../shared/data are absent")
            continue
        fg, d, _ = _STATE
        rel, cheap, strong = fg.FILES[name]
        result["data"][name] = per = {"pair": f"{cheap} -> {strong}", "pool": int(len(d.pool)),
                                      "test": int(len(d.test)), "sizes": {}}
        sizes = [n for n in (int(x) for x in args.sizes.split(",") if x.strip()) if n <= len(d.pool)]
        _run_sizes(name, sizes, per["sizes"], args)
    result["conditions"] = {"data": args.data, "sizes": args.sizes, "draws": args.draws, "floor": args.floor, "risk": args.risk,
                            "seed": args.seed, "workers": args.workers, "cpus": os.cpu_count(),
                            "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                            "seconds": time.perf_counter() - t0,
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
