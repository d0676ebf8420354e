"""Does the quality floor hold on new traffic? Risk-controlled thresholds against the old rule.

For each public file (routellm-mmlu; mmlu-pro gpt-4o vs gemini-1.5-flash; routerbench gpt-4 vs
gpt-3.5) the prompts are split by text into a pool and a large disjoint test set. Many small
logs of each size are drawn from the pool; each goes through the pipeline's own stages on cached
embeddings (`select_head`, `threshold_stage`, `choose_threshold`: the 70/15/15 split by prompt,
the calibrated head, the threshold) and the chosen threshold is scored on the test set. Per size:
the share of draws where quality >= floor x always-strong held (target >= 1 - risk), the mean
cheap share and cost saved, for
  - old:        the empirical rule (threshold where validation just meets the floor; --risk none)
  - ltt-val:    Learn-then-Test on the validation split (the head fitted on train)
  - ltt-oof:    Learn-then-Test on cross-fitted train + validation scores, head refit on both (default)
A second, smaller part compares head selection by validation APGR with validation log-loss: the
held-out APGR of the head each criterion picks.

    python benchmarks/floor_guarantee.py [--draws 50] [--sizes 300,1000,3000] [--files ...] [--certificate ...]

The two LTT variants use `--certificate` (default betting; the results file of 1 Dec 2026 was run
with clopper-pearson, the default then). Both certificates side by side, over many more draws:
benchmarks/certificate_simulation.py.

Writes benchmarks/results/floor_guarantee.json. Needs ../shared/data; embeddings are cached.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.features import DEFAULT_FEATURES
from router_model.offline import metrics as M
from router_model.offline.costs import request_costs
from router_model.offline.log import ReadOptions, read_logs
from router_model.offline.split import assign_splits, normalize_prompt, sample_groups
from training.cache import default_cache_dir
from training.data.public import shared_data_dir
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import OnnxEmbedder
from training.head import DEFAULT_HEADS, make_target, p_cheap_ok, select_head
from training.threshold import Goal, choose_threshold, threshold_stage

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "routellm-mmlu": ("routellm-evals/routellm-mmlu.normalized.jsonl", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                      "gpt-4-1106-preview"),
    "mmlu-pro": ("mmlu-pro/mmlu-pro.normalized.jsonl", "gemini-1.5-flash-002", "gpt-4o-2024-05-13"),
    "routerbench": ("routerbench-subset/routerbench-subset.normalized.jsonl", "gpt-3.5-turbo-1106",
                    "gpt-4-1106-preview"),
}
RULES = ("old", "ltt-val", "ltt-oof")
HEAD = "logreg_c0.1"  # the threshold part uses one head (the selection part compares the defaults)


@dataclass
class Data:
    name: str
    ids: list[str]  # the log's row ids (benchmarks/savings_under_guarantee.py joins the cheap answers on them)
    texts: list[str]
    X: np.ndarray
    w: np.ndarray
    s: np.ndarray
    cc: np.ndarray
    cs: np.ndarray
    pool: np.ndarray
    test: np.ndarray


def load(name: str, embedder: OnnxEmbedder, test_fraction: float, max_rows: int | None = None) -> Data | None:
    rel, cheap, strong = FILES[name]
    path = shared_data_dir() / rel
    if not path.exists():
        print(f"{name}: skipped, {path} is absent")
        return None
    # Rows where either model has no outcome (28 in routerbench) are skipped, and counted.
    read = read_logs([path], models=(cheap, strong), options=ReadOptions(skip_invalid=True))
    recs = read.records
    if max_rows is not None and len(recs) > max_rows:  # a spread sample, whole prompts (the test's small run)
        recs = tuple(recs[i] for i in sample_groups([normalize_prompt(r.classifier_text) for r in recs], max_rows))
        read = replace(read, records=recs)
    texts = [r.classifier_text for r in recs]
    w = np.array([float(r.passed[cheap]) for r in recs])
    s = np.array([float(r.passed[strong]) for r in recs])
    t0 = time.perf_counter()
    E = embedder.embed(texts)
    n_tokens = [embedder.encoder.count_tokens(r.full_text) for r in recs]
    X = feature_matrix(E, texts, n_tokens, features=DEFAULT_FEATURES)
    # Dollars at list prices; a model without one is priced as training prices the public pair
    # (cheap as gpt-4o-mini, strong as gpt-4o).
    listed = PriceTable.load(None)
    price_as = {m: as_ for m, as_ in ((cheap, "gpt-4o-mini"), (strong, "gpt-4o")) if m not in listed}
    costs = request_costs(read, PriceTable.load(None, price_as=price_as), DEFAULT_OUTPUT_TOKENS)
    # Pool / test split by prompt text (the test set never shares a prompt with any drawn log).
    side = assign_splits([normalize_prompt(t) for t in texts], fractions=(1 - test_fraction, test_fraction / 2,
                         test_fraction / 2), seed=12345)
    pool, test = np.flatnonzero(side == "train"), np.flatnonzero(side != "train")
    print(f"{name}: {len(recs)} rows ({sum(read.skipped.values())} skipped: {dict(read.skipped)}; cheap pass {w.mean():.3f}, strong {s.mean():.3f}); pool {len(pool)}, "
          f"test {len(test)}; embedded in {time.perf_counter() - t0:.0f}s ({embedder.last_stats})", flush=True)
    return Data(name, [r.id for r in recs], texts, X, w, s, costs.cheap, costs.strong, pool, test)


def on_test(d: Data, p: np.ndarray, threshold: float) -> dict[str, float]:
    te = d.test
    cheap = p >= threshold
    q = np.where(cheap, d.w[te], d.s[te]).mean()
    cost = np.where(cheap, d.cc[te], d.cs[te]).mean()
    return {"quality_vs_strong": float(q / d.s[te].mean()), "cheap_share": float(cheap.mean()),
            "cost_saved": float(1 - cost / d.cs[te].mean())}


def one_draw(d: Data, n: int, seed: int, goal: Goal) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(d.pool, size=n, replace=False))
    texts = [d.texts[i] for i in rows]
    X, w, s, cc, cs = d.X[rows], d.w[rows], d.s[rows], d.cc[rows], d.cs[rows]
    split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    head = select_head(X, w, s, train_rows=tr, val_rows=va, target=make_target("joint"), names=(HEAD,), say=lambda _: None)
    p_val = head.p_cheap_ok(X[va])
    Xt = d.X[d.test]
    p_test = head.p_cheap_ok(Xt)
    out = {}
    old = choose_threshold(p_val, w[va], s[va], cost_cheap=cc[va], cost_strong=cs[va], goal=replace(goal, risk=None))
    out["old"] = {**on_test(d, p_test, old.threshold), "certified": float(old.met)}
    val = choose_threshold(p_val, w[va], s[va], cost_cheap=cc[va], cost_strong=cs[va], goal=goal)
    out["ltt-val"] = {**on_test(d, p_test, val.threshold), "certified": float(bool(val.certified))}
    st = threshold_stage(head, X, texts, cheap_passed=w, strong_passed=s, cost_cheap=cc, cost_strong=cs, train_rows=tr,
                         val_rows=va, goal=goal, rows="oof")
    out["ltt-oof"] = {**on_test(d, st.head.p_cheap_ok(Xt), st.choice.threshold),
                      "certified": float(bool(st.choice.certified))}
    for k in out:
        out[k]["held"] = float(out[k]["quality_vs_strong"] >= goal.value)
    return out


def selection_draw(d: Data, n: int, seed: int) -> dict[str, float]:
    """Held-out APGR of the head picked by validation APGR, by validation log-loss, and the best possible."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(d.pool, size=n, replace=False))
    texts = [d.texts[i] for i in rows]
    X, w, s = d.X[rows], d.w[rows], d.s[rows]
    split = assign_splits([normalize_prompt(t) for t in texts], seed=int(rng.integers(1 << 30)))
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    target = make_target("joint")
    fitted = {}
    for name in DEFAULT_HEADS:  # the same fits, judged two ways
        h = select_head(X, w, s, train_rows=tr, val_rows=va, target=target, names=(name,), say=lambda _: None)
        fitted[name] = (h.validation[name], h.model)
    te = d.test
    test_apgr = {k: M.apgr(1 - p_cheap_ok(m, d.X[te], target), d.w[te], d.s[te]) for k, (_, m) in fitted.items()}
    by_apgr = max(fitted, key=lambda k: (np.nan_to_num(fitted[k][0]["apgr"], nan=-1.0)))
    by_ll = min(fitted, key=lambda k: fitted[k][0]["log_loss"])
    return {"apgr": test_apgr[by_apgr], "log_loss": test_apgr[by_ll], "best": max(test_apgr.values())}


def summarise(draws: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for rule in RULES:
        rows = [d[rule] for d in draws]
        out[rule] = {
            "floor_held": float(np.mean([r["held"] for r in rows])),
            "certified": float(np.mean([r["certified"] for r in rows])),
            "cheap_share": float(np.mean([r["cheap_share"] for r in rows])),
            "cost_saved": float(np.mean([r["cost_saved"] for r in rows])),
            "quality_vs_strong_mean": float(np.mean([r["quality_vs_strong"] for r in rows])),
            "quality_vs_strong_min": float(np.min([r["quality_vs_strong"] for r in rows])),
        }
    return out


_DATA: Data | None = None  # the file being run, shared with forked workers (copy-on-write)


def _task(job: tuple[str, int, int, Goal]) -> Any:
    from threadpoolctl import threadpool_limits

    kind, n, seed, goal = job
    assert _DATA is not None
    warnings.filterwarnings("ignore")  # sklearn convergence chatter on tiny calibration folds
    with threadpool_limits(1):  # one BLAS thread per worker: oversubscribed BLAS is 5x slower here
        return one_draw(_DATA, n, seed, goal) if kind == "floor" else selection_draw(_DATA, n, seed)


def _map(jobs: list[tuple[str, int, int, Goal]], workers: int) -> list[Any]:
    if workers <= 1:
        return [_task(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_task, jobs, chunksize=1)


def run(files: list[str], sizes: list[int], draws: int, selection_draws: int, floor: float, risk: float,
        test_fraction: float = 0.4, seed: int = 0, workers: int = 2,
        say: Callable[[str], None] = print, out: Path | None = None, max_rows: int | None = None,
        certificate: str = "betting") -> dict[str, Any]:
    """The benchmark as a JSON-ready dict (the test runs a small version of it, on max_rows rows per file)."""
    global _DATA
    cache = default_cache_dir()
    embedder = OnnxEmbedder(export_embedder(cache_dir=cache), cache_dir=cache)
    goal = Goal.quality_floor(floor, risk, certificate)
    result: dict[str, Any] = {"floor": floor, "risk": risk, "certificate": certificate, "draws": draws, "sizes": sizes,
                              "head": HEAD,
                    "selection_draws": selection_draws, "files": {}}
    for name in files:
        d = load(name, embedder, test_fraction, max_rows)
        if d is None:
            continue
        _DATA = d
        res: dict[str, Any] = {"n_pool": int(len(d.pool)), "n_test": int(len(d.test)), "sizes": {}}
        for n in sizes:
            if n > len(d.pool):
                say(f"  {name} n={n}: skipped, the pool has {len(d.pool)} rows (a disjoint test set needs the rest)")
                res["sizes"][str(n)] = {"skipped": f"pool has {len(d.pool)} rows"}
                continue
            seeds = np.random.default_rng([seed, n, len(name)]).integers(1 << 31, size=draws + selection_draws)
            t0 = time.perf_counter()
            done = _map([("floor", n, int(x), goal) for x in seeds[:draws]]
                        + [("selection", n, int(x), goal) for x in seeds[draws:]], workers)
            per, sel = done[:draws], done[draws:]
            summ: dict[str, Any] = dict(summarise(per))
            if sel:
                summ["head_selection_test_apgr"] = {k: float(np.mean([x[k] for x in sel])) for k in sel[0]}
            summ["seconds"] = time.perf_counter() - t0
            res["sizes"][str(n)] = summ
            say(f"  {name} n={n} ({draws} draws, {summ['seconds']:.0f}s):")
            for rule in RULES:
                r = summ[rule]
                say(f"    {rule:<8} floor held {r['floor_held']:6.1%}  certified {r['certified']:6.1%}  cheap "
                    f"{r['cheap_share']:6.1%}  cost saved {r['cost_saved']:6.1%}  q/strong mean "
                    f"{r['quality_vs_strong_mean']:.3f} min {r['quality_vs_strong_min']:.3f}")
            if sel:
                hs = summ["head_selection_test_apgr"]
                say(f"    head selection ({len(sel)} draws), held-out APGR of the pick: by val APGR {hs['apgr']:.4f}, "
                    f"by val log-loss {hs['log_loss']:.4f}, best candidate {hs['best']:.4f}")
        result["files"][name] = res
        if out is not None:  # after every file: a long run keeps what it measured
            out.write_text(json.dumps(result, indent=2))
    embedder.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=50, help="random small logs per size (default: %(default)s)")
    p.add_argument("--sizes", default="300,1000,3000", help="comma-separated log sizes (default: %(default)s)")
    p.add_argument("--files", default=",".join(FILES), help=f"comma-separated, of {', '.join(FILES)}")
    p.add_argument("--selection-draws", type=int, default=10, help="draws per size for the head-selection part")
    p.add_argument("--floor", type=float, default=0.95)
    p.add_argument("--risk", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certificate", choices=("betting", "clopper-pearson"), default="betting",
                   help="the LTT variants' test (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes (one BLAS thread each; default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "floor_guarantee.json")
    p.add_argument("--merge", action="store_true",
                   help="keep the other files' results already in --out (same floor, risk and draws) and replace "
                        "only the files run now")
    args = p.parse_args(argv)
    files = [f.strip() for f in args.files.split(",") if f.strip()]
    unknown = [f for f in files if f not in FILES]
    if unknown:
        p.error(f"unknown files {unknown}; known: {', '.join(FILES)}")
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept: dict[str, Any] = {}
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        same = ({k: old.get(k) for k in ("floor", "risk", "draws")} == {"floor": args.floor, "risk": args.risk,
                                                                        "draws": args.draws}
                and old.get("certificate", "clopper-pearson") == args.certificate)
        if not same:
            p.error(f"--merge: {args.out} was run with floor/risk/draws {old.get('floor')}/{old.get('risk')}/"
                    f"{old.get('draws')}, not {args.floor}/{args.risk}/{args.draws}")
        kept = {k: v for k, v in old.get("files", {}).items() if k not in files}
    result = run(files, sizes, args.draws, args.selection_draws, args.floor, args.risk, seed=args.seed,
                 workers=args.workers, say=lambda m: print(m, flush=True), out=None if kept else args.out,
                 certificate=args.certificate)
    result["files"] = {**kept, **result["files"]}
    if kept:
        result["kept_from_an_earlier_run"] = sorted(kept)  # "seconds" below covers only this run's files
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
