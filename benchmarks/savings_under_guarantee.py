"""The savings kept under the quality floor, every lever of issue 26 on the same draws, in one table.

Three public files: routellm-mmlu (Mixtral -> gpt-4; the log keeps no answers), mmlu-pro
(gemini-1.5-flash-002 -> gpt-4o-2024-05-13) and routerbench (gpt-3.5-turbo-1106 -> gpt-4-1106-preview),
the last two with the cheap model's own answers from their raw files in ../shared/data (MMLU-Pro
outputs; RouterBench responses: ARC / Winogrande single letters, MBPP code). Per file the prompts
are split by text into a pool (60%) and a disjoint test set (40%). Each draw takes a labelled log
of N rows from the pool and runs router-train's own stages on cached embeddings (the 70/15/15
split, the `logreg_c0.1` head, `threshold_stage`, `with_escalation`, `every_row_stage`, `on_every_row`), floor
0.95 at risk 0.05. The rules, each scored on the test set:

  empirical        the threshold where validation just meets the floor (--risk none): no guarantee
  clopper-pearson  the certificate before issue 26 (a union of three bounds), cross-fitted
                   train + validation scores (--certificate clopper-pearson --threshold-rows oof)
  betting          the betting certificate on the same scores (--certificate betting --threshold-rows oof)
  exact            the exact certificate on the same scores (--threshold-rows oof; betting above
                   2,500 rows)
  every-row-betting  betting, cross-fitted again over every labelled row (the default before the
                   exact certificate: --certificate betting --escalation off)
  every-row        the exact certificate on those scores (--escalation off; the default when the
                   log keeps no answers)
  route+escalate-oof  routing alone or the cascade on the answer score, each at risk 0.025 on
                   cross-fitted train + validation scores, the cheaper served (router-train's default
                   when the log kept the cheap answers, before it certified on every row)
  route+escalate   the same choice made again on every labelled row (`on_every_row`: router-train's
                   default when the log kept the cheap answers); both only for the files that have them

Per rule: the share of draws where quality >= 0.95 x always-strong held on the test set (with a
95% upper bound on the violation rate), cost / always-strong, quality / always-strong, cheap
and escalated shares; for route+escalate the wait an escalation adds (the cheap answer's
generation time, ESTIMATED from its length by router_model/answer_score.py `estimated_wait_s`:
0.4 s + characters / 4 tokens at 150 tokens/s; the logs hold no latencies). Then the N-model
policy on routerbench (benchmarks/multi_model.py's run on its held-out half: one split, not
draws): its certified cost and quality as a share of gpt-4's.

Validity over thousands of draws (certificates on fixed scores and the whole pipeline):
benchmarks/certificate_simulation.py; one-at-a-time variants of the head: benchmarks/head_variants.py.

    python benchmarks/savings_under_guarantee.py [--data routellm-mmlu,mmlu-pro,routerbench]
        [--sizes N,...] [--draws 200] [--workers 2] [--no-n-model] [--max-rows N]

(Sizes default to 1,000 / 3,000 rows on routellm-mmlu, 1,500 / 3,000 / 6,000 on mmlu-pro and 1,500 on
routerbench; --sizes applies to every file, and sizes above a file's pool are left out.)

Writes benchmarks/results/savings_under_guarantee.json. Needs ../shared/data (skips otherwise);
embeddings cached.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "savings_under_guarantee.json"
CHEAP_OUTPUTS = {"mmlu-pro": "mmlu-pro/raw/model_outputs_zips/model_outputs_gemini-1.5-flash-002_5shots.zip",
                 "routerbench": "routerbench-subset/raw/routerbench_zs"}
# The sizes of issue 26's targets: routellm-mmlu 1,000 / 3,000; mmlu-pro up to 6,000 (its pool is 7,233);
# routerbench's pool (1,890 rows) holds one size.
SIZES = {"routellm-mmlu": (1000, 3000), "mmlu-pro": (1500, 3000, 6000), "routerbench": (1500,)}
RULES = ("empirical", "clopper-pearson", "betting", "exact", "every-row-betting", "every-row", "route+escalate-oof",
         "route+escalate")
CASCADES = ("route+escalate-oof", "route+escalate")

# (floor_guarantee module, its Data, the cheap answers or None, the test set's answer features or None),
# shared with forked workers
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


def load(name: str, max_rows: int | None = None) -> Any:
    """(floor_guarantee, its Data for the file, the cheap answers per row or None, the test set's answer
    features or None); None: the file is absent."""
    import floor_guarantee as fg

    from router_model.answer_features import answer_feature_matrix
    from training.cache import default_cache_dir
    from training.data.public import shared_data_dir
    from training.embedding.export import export_embedder
    from training.embedding.onnx_embedder import OnnxEmbedder

    cache = default_cache_dir()
    embedder = OnnxEmbedder(export_embedder(cache_dir=cache), cache_dir=cache)
    d = fg.load(name, embedder, 0.4, max_rows)
    embedder.close()
    if d is None:
        return None
    if name not in CHEAP_OUTPUTS:
        return fg, d, None, None
    raw = shared_data_dir() / CHEAP_OUTPUTS[name]
    if not raw.exists():
        print(f"{name}: {raw} is absent: no route+escalate column", flush=True)
        return fg, d, None, None
    by_id = _mmlu_pro_answers(raw) if name == "mmlu-pro" else _routerbench_answers(raw, fg.FILES[name][1])
    answers = [by_id.get(i, "") for i in d.ids]
    print(f"{name}: cheap answers for {sum(bool(a) for a in answers)} of {len(answers)} rows", flush=True)
    return fg, d, answers, answer_feature_matrix([answers[i] for i in d.test])  # once: every draw scores them


def one_draw(job: tuple[int, int, float, float, tuple[str, ...], str]) -> dict[str, Any]:
    """One labelled log of n rows through router-train's stages; every rule scored on the test set."""
    from threadpoolctl import threadpool_limits

    from router_model.answer_score import estimated_wait_s
    from router_model.offline.split import assign_splits, normalize_prompt
    from training.escalation import on_every_row, served, with_escalation, with_prompt_logit
    from training.head import make_target, select_head
    from training.threshold import Goal, choose_threshold, every_row_stage, threshold_stage

    n, seed, floor, risk, heads, select_by = job
    fg, d, answers, test_features = _STATE
    te = d.test
    test = {"cheap_passed": d.w[te], "strong_passed": d.s[te], "cost_cheap": d.cc[te], "cost_strong": d.cs[te]}
    no_answer_score = np.zeros(len(te))

    def routed(p_test: np.ndarray, threshold: float) -> dict[str, Any]:
        return {**served(p_test, no_answer_score, threshold=threshold, answer_threshold=None, **test), "family": "route"}

    def cascade_on_test(p_test: np.ndarray, threshold: float, esc: Any) -> dict[str, Any]:
        """Route then escalate on the test set; the added wait of the escalated requests (estimated)."""
        u = esc.record.answer_threshold if esc is not None and esc.record.on else None
        q_test = (esc.head.predict(with_prompt_logit(test_features, p_test))
                  if esc is not None and esc.head is not None and u is not None else no_answer_score)
        r = served(p_test, q_test, threshold=threshold, answer_threshold=u, **test)
        escalated = (p_test >= threshold) & (q_test >= u) if u is not None else np.zeros(len(te), dtype=bool)
        wait = estimated_wait_s(np.array([len(answers[i]) for i in te], dtype=float)[escalated] / 4.0)
        return {**r, "family": "off" if esc is None else esc.record.family,
                "wait_p50": float(np.percentile(wait, 50)) if len(wait) else 0.0,
                "wait_p99": float(np.percentile(wait, 99)) if len(wait) else 0.0}

    warnings.filterwarnings("ignore")  # sklearn convergence chatter on tiny calibration folds
    out: dict[str, Any] = {}
    with threadpool_limits(1):  # one BLAS thread per worker: oversubscribed BLAS is 5x slower here
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(d.pool, size=n, replace=False))
        texts = [d.texts[i] for i in rows]
        X = d.X[rows]
        outcomes = {"cheap_passed": d.w[rows], "strong_passed": d.s[rows], "cost_cheap": d.cc[rows],
                    "cost_strong": d.cs[rows]}
        split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
        tr, va, lte = (np.flatnonzero(split == k) for k in ("train", "val", "test"))
        goal = Goal.quality_floor(floor, risk)
        head = select_head(X, outcomes["cheap_passed"], outcomes["strong_passed"], train_rows=tr, val_rows=va,
                           target=make_target("joint"), names=heads or (fg.HEAD,), say=lambda _: None,
                           select_by=select_by)
        def chosen_on(scores: np.ndarray, at: np.ndarray, rule_goal: Goal) -> float:
            w, s, cc, cs = (outcomes[k][at] for k in ("cheap_passed", "strong_passed", "cost_cheap", "cost_strong"))
            return choose_threshold(scores, w, s, cost_cheap=cc, cost_strong=cs, goal=rule_goal).threshold

        out["empirical"] = routed(head.p_cheap_ok(d.X[te]), chosen_on(head.p_cheap_ok(X[va]), va, replace(goal, risk=None)))
        stage = threshold_stage(head, X, texts, **outcomes, train_rows=tr, val_rows=va, goal=goal, rows="oof")
        p_test = stage.head.p_cheap_ok(d.X[te])
        # the stage's own scores, or validation's when too few rows of a class could be cross-fitted
        scores, at = ((head.p_cheap_ok(X[va]), va) if stage.scores is None or stage.labelled_rows is None
                      else (stage.scores, stage.labelled_rows))
        for cert in ("clopper-pearson", "betting"):
            out[cert] = routed(p_test, chosen_on(scores, at, replace(goal, certificate=cert)))
        out["exact"] = routed(p_test, stage.choice.threshold)
        if answers is None:
            final = every_row_stage(stage, X, texts, **outcomes, train_rows=tr, val_rows=va, test_rows=lte, goal=goal)
        else:  # route against cascade on train + validation, then again on every row (what router-train ships)
            draw_answers = [answers[i] for i in rows]
            choice, esc = with_escalation(stage, answers=draw_answers, **outcomes, goal=goal,
                                          test_rows=np.empty(0, dtype=int), p_test=np.empty(0))
            out["route+escalate-oof"] = cascade_on_test(stage.head.p_cheap_ok(d.X[te]), choice.threshold, esc)
            final, choice, esc = on_every_row(stage, esc, X=X, texts=texts, answers=draw_answers, **outcomes,
                                              train_rows=tr, val_rows=va, test_rows=lte, goal=goal)
            out["route+escalate"] = cascade_on_test(final.head.p_cheap_ok(d.X[te]), choice.threshold, esc)
        p_final = final.head.p_cheap_ok(d.X[te])
        out["every-row"] = routed(p_final, final.choice.threshold)
        if final.scores is not None and final.labelled_rows is not None:
            out["every-row-betting"] = routed(p_final, chosen_on(final.scores, final.labelled_rows,
                                                                 replace(goal, certificate="betting")))
    for rule in out:
        out[rule]["held"] = float(out[rule]["quality_vs_strong"] >= floor)
    return out


def summarise(draws: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import beta

    res: dict[str, Any] = {}
    for rule in RULES:
        rows = [d[rule] for d in draws if rule in d]
        if not rows:
            continue
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
        if rule in CASCADES:
            res[rule]["added_wait_p50_s"] = float(np.mean([r["wait_p50"] for r in rows]))
            res[rule]["added_wait_p99_s"] = float(np.mean([r["wait_p99"] for r in rows]))
    return res


def _print_size(name: str, n: int, summ: dict[str, Any]) -> None:
    print(f"{name} n={n} ({summ['draws']} draws, {summ['seconds']:.0f}s):", flush=True)
    for rule in RULES:
        if rule not in summ:
            continue
        r = summ[rule]
        extra = (f"  escalated {r['escalated_share']:.1%}  added wait p50 {r['added_wait_p50_s']:.1f}s "
                 f"p99 {r['added_wait_p99_s']:.1f}s  families {r['families']}" if rule in CASCADES else "")
        print(f"  {rule:<18} held {r['held']:6.1%}  cheap {r['cheap_share']:6.1%}  cost {r['cost_vs_strong']:.3f} of "
              f"always-strong  quality {r['quality_vs_strong']:.3f} (min {r['quality_vs_strong_min']:.3f})" + extra,
              flush=True)


def _run_sizes(name: str, sizes: list[int], out: dict[str, Any], args: argparse.Namespace) -> None:
    for n in sizes:
        seeds = np.random.default_rng([args.seed, n, 26]).integers(1 << 31, size=args.draws)
        heads = tuple(h.strip() for h in args.heads.split(",") if h.strip()) if args.heads else ()
        jobs = [(n, int(x), args.floor, args.risk, heads, args.select_by) for x in seeds]
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
        _print_size(name, n, summ)


def n_model_part() -> dict[str, Any] | None:
    """The certified N-model policy on routerbench's held-out half (multi_model.py's own run)."""
    import multi_model as mm

    from training.cache import default_cache_dir
    from training.data.public import shared_data_dir

    shared = shared_data_dir()
    path = Path(shared) / mm.DATA["routerbench"] if shared is not None else None
    if path is None or not path.exists():
        print("n-model: skipped, routerbench-subset is absent", flush=True)
        return None
    rep = mm.run("routerbench", path, Path(shared), default_cache_dir(), None, say=lambda _: None)
    c = rep["certificate"]["one_sequence"]
    part = {key: c[key] for key in ("reference", "kind", "method", "certified", "test_cost_vs_reference",
                                    "test_quality_vs_reference", "val_cost_vs_reference")}
    print(f"n-model on routerbench (11 models, held-out half): certified {c['kind']} policy at "
          f"{c['test_cost_vs_reference']:.1%} of {c['reference']}'s cost, {c['test_quality_vs_reference']:.1%} of "
          "its quality", flush=True)
    return part


def main(argv: list[str] | None = None) -> int:
    global _STATE
    from router_model.answer_score import ASSUMED_FIRST_TOKEN_S, ASSUMED_TOKENS_PER_S

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="routellm-mmlu,mmlu-pro,routerbench")
    ap.add_argument("--sizes", default=None, help="labelled-log sizes for every file (default: SIZES per file)")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--floor", type=float, default=0.95)
    ap.add_argument("--risk", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-n-model", action="store_true", help="leave the N-model part out")
    ap.add_argument("--max-rows", type=int, default=None, help="a spread sample of N rows per file (smoke runs)")
    ap.add_argument("--heads", default=None, help="candidate heads, chosen on validation as router-train does "
                    "(default: floor_guarantee's one head, logreg_c0.1; 'default': router-train's own candidates)")
    ap.add_argument("--select-by", default="apgr", choices=("apgr", "log_loss"),
                    help="how the heads are compared on validation (router-train's --select-heads-by)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.heads == "default":
        from training.head import DEFAULT_HEADS

        args.heads = ",".join(DEFAULT_HEADS)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"about": __doc__.split("\n\n")[0],
                              "latency_assumption": {"first_token_s": ASSUMED_FIRST_TOKEN_S,
                                                     "tokens_per_s": ASSUMED_TOKENS_PER_S, "tokens": "characters / 4"},
                              "data": {}}
    for name in [x.strip() for x in args.data.split(",") if x.strip()]:
        _STATE = load(name, args.max_rows)
        if _STATE is None:
            print(f"{name}: skipped, it is absent from ../shared/data")
            continue
        fg, d, _, _ = _STATE
        rel, cheap, strong = fg.FILES[name]
        result["data"][name] = per = {"pair": f"{cheap} -> {strong}", "pool": int(len(d.pool)),
                                      "test": int(len(d.test)), "sizes": {}}
        asked = [int(x) for x in args.sizes.split(",") if x.strip()] if args.sizes else list(SIZES[name])
        sizes = [n for n in asked if n <= len(d.pool)]
        _run_sizes(name, sizes, per["sizes"], args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))  # after every file: a long run keeps what it measured
    if not args.no_n_model:
        result["n_model_routerbench"] = n_model_part()
    result["conditions"] = {"data": args.data, "sizes": args.sizes, "draws": args.draws, "max_rows": args.max_rows,
                            "floor": args.floor, "heads": args.heads or "logreg_c0.1", "select_by": args.select_by,
                            "risk": args.risk, "seed": args.seed, "workers": args.workers, "cpus": os.cpu_count(),
                            "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
                            "seconds": time.perf_counter() - t0,
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
