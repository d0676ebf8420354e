"""head_tail truncation against plain head truncation, on public logs with prompts longer than the window.

The embedder sees at most `max_length` (256) tokens. `head` keeps the first 254 text tokens (what
sentence-transformers does); `head_tail` (the default) keeps the first half and the last half of
the budget, so a question that follows a long context or few-shot block stays visible.

Method: export the embedder once, build two `OnnxEmbedder`s whose `spec.encoder` differ only in
`truncation`, embed every prompt with both (through the shared embedding cache; a prompt that fits
the window gets identical token ids under both policies, so only the long prompts go through the
`head` embedder and the short ones reuse the head_tail vectors, which is checked on a sample), then
grouped 5-fold cross-validation (`group_kfold` on `normalize_prompt` keys) of a sigmoid-calibrated
logistic regression (the project's `logreg_c0.3` head) on the `cheap_ok` target, fed the embedding
and the default request features (computed on the full text, identical under both policies), as in
production. Out-of-fold p_cheap_ok gives APGR and CPT(50%) over all rows and over the rows longer
than the window; a paired bootstrap over prompt groups gives a 90% interval of head_tail - head.

Data (read by path, never copied): RouterBench subset (ARC-Challenge, Winogrande few-shot prompts
and MBPP; cheap gpt-3.5-turbo-1106, strong gpt-4-1106-preview) and the MMLU `professional_law`
rows of routellm-mmlu (cheap Mixtral-8x7B, strong gpt-4-1106-preview). Each log has its own model
pair, so each is evaluated on its own.

    python benchmarks/truncation.py [--out benchmarks/results/truncation.json] [--max-rows N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import numpy as np

from router_model.features import DEFAULT_FEATURES
from router_model.offline import metrics as M
from router_model.offline.log import ReadOptions, read_logs
from router_model.offline.split import group_kfold, normalize_prompt
from training.cache import default_cache_dir
from training.embedding.common import DEFAULT_EMBEDDER
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import ExportedEmbedder, OnnxEmbedder
from training.head import candidate_heads, cheap_loses_nothing, make_target, p_cheap_ok

ROOT = Path(__file__).resolve().parent.parent

DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "routerbench": {
        "path": DATA / "routerbench-subset" / "routerbench-subset.normalized.jsonl",
        "cheap": "gpt-3.5-turbo-1106",
        "strong": "gpt-4-1106-preview",
        "category": None,
    },
    "mmlu_professional_law": {
        "path": DATA / "routellm-evals" / "routellm-mmlu.normalized.jsonl",
        "cheap": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "strong": "gpt-4-1106-preview",
        "category": "routellm/mmlu/professional_law",
    },
}
POLICIES = ("head", "head_tail")
HEAD = "logreg_c0.3"
FOLDS = 5
BOOTSTRAP = 500


def say(msg: str) -> None:
    print(msg, flush=True)


def load(name: str, cfg: dict, max_rows: int | None, seed: int):
    read = read_logs([cfg["path"]], models=(cfg["cheap"], cfg["strong"]), options=ReadOptions(skip_invalid=True))
    recs = [r for r in read.records if cfg["category"] is None or r.category == cfg["category"]]
    note = None
    if max_rows and len(recs) > max_rows:
        note = f"subsampled to {max_rows} of {len(recs)} rows (seed {seed})"
        recs = random.Random(seed).sample(recs, max_rows)
    return recs, dict(read.skipped), note


def policy_embedders(exported: ExportedEmbedder, cache_dir: Path) -> dict[str, OnnxEmbedder]:
    out = {}
    for p in POLICIES:
        spec = dataclasses.replace(exported.spec, encoder=dataclasses.replace(exported.spec.encoder, truncation=p))
        out[p] = OnnxEmbedder(dataclasses.replace(exported, spec=spec), cache_dir=cache_dir)
    return out


def embed_both(embedders: dict[str, OnnxEmbedder], texts: list[str], long: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Embeddings under both policies; short texts (identical ids) are embedded once and shared."""
    t0 = time.perf_counter()
    ht = embedders["head_tail"].embed(texts, progress=False)
    st_ht = dict(embedders["head_tail"].last_stats)
    head = ht.copy()
    idx = np.flatnonzero(long)
    if len(idx):
        head[idx] = embedders["head"].embed([texts[i] for i in idx], progress=False)
    st_h = dict(embedders["head"].last_stats)
    # The sharing is only valid if short texts really encode identically: check a sample.
    short = np.flatnonzero(~long)
    rng = np.random.default_rng(seed)
    for i in rng.choice(short, size=min(50, len(short)), replace=False) if len(short) else []:
        a, _ = embedders["head"].encoder.encode_one(texts[i])
        b, _ = embedders["head_tail"].encoder.encode_one(texts[i])
        assert list(a.ids) == list(b.ids), "a short text encodes differently under head and head_tail"
    for i in rng.choice(idx, size=min(50, len(idx)), replace=False) if len(idx) else []:
        a, _ = embedders["head"].encoder.encode_one(texts[i])
        b, _ = embedders["head_tail"].encoder.encode_one(texts[i])
        assert list(a.ids) != list(b.ids), "a long text encodes identically under head and head_tail"
    stats = {
        "seconds": time.perf_counter() - t0,
        "head_tail": {k: int(st_ht.get(k, 0)) for k in ("texts", "embedded", "from_cache")},
        "head_long_only": {k: int(st_h.get(k, 0)) for k in ("texts", "embedded", "from_cache")},
    }
    return {"head_tail": ht, "head": head}, stats


def oof_scores(X: np.ndarray, y: np.ndarray, folds, target, seed: int) -> np.ndarray:
    p = np.zeros(len(y))
    for tr, te in folds:
        model = candidate_heads(seed=seed)[HEAD]()
        model.fit(X[tr], y[tr])
        p[te] = p_cheap_ok(model, X[te], target)
    return p


def block(p: np.ndarray, w: np.ndarray, s: np.ndarray) -> dict[str, float]:
    ok = cheap_loses_nothing(w, s)
    scores = M.routing_scores(1.0 - p, w, s)
    return {
        "n": int(len(p)),
        "apgr": scores["apgr"],
        "cpt50": scores["cpt50"],
        "auc_cheap_ok": M.auc(p, ok) if 0 < ok.sum() < len(ok) else float("nan"),
    }


def paired_bootstrap(p_a: np.ndarray, p_b: np.ndarray, w, s, groups: list[str], n: int, seed: int) -> dict[str, float]:
    """90% interval of (metric under b) - (metric under a), resampling prompt groups."""
    rows_of: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        rows_of.setdefault(g, []).append(i)
    keys = list(rows_of)
    rng = np.random.default_rng(seed)
    d_apgr, d_cpt = [], []
    for _ in range(n):
        pick = rng.integers(0, len(keys), len(keys))
        idx = np.concatenate([rows_of[keys[k]] for k in pick])
        ww, ss = w[idx], s[idx]
        if ss.mean() == ww.mean():
            continue
        d_apgr.append(M.apgr(1 - p_b[idx], ww, ss) - M.apgr(1 - p_a[idx], ww, ss))
        c_b, c_a = M.cpt(1 - p_b[idx], ww, ss, pct=50), M.cpt(1 - p_a[idx], ww, ss, pct=50)
        if np.isfinite(c_a) and np.isfinite(c_b):
            d_cpt.append(c_b - c_a)
    q = lambda v, x: float(np.percentile(v, x)) if v else float("nan")  # noqa: E731
    return {
        "apgr_diff_p05": q(d_apgr, 5),
        "apgr_diff_p95": q(d_apgr, 95),
        "cpt50_diff_p05": q(d_cpt, 5),
        "cpt50_diff_p95": q(d_cpt, 95),
        "resamples": len(d_apgr),
    }


def run_dataset(name: str, cfg: dict, embedders, args) -> dict:
    t0 = time.perf_counter()
    recs, skipped, note = load(name, cfg, args.max_rows, args.seed)
    texts = [r.classifier_text for r in recs]
    enc = embedders["head_tail"].encoder
    budget = enc.settings.max_length - enc._n_special
    n_tok = np.array([enc.count_tokens(r.full_text) for r in recs], dtype=np.int64)
    n_cls = np.array([enc.count_tokens(t) for t in texts], dtype=np.int64)
    long = n_cls > budget
    w = np.array([float(r.passed[cfg["cheap"]]) for r in recs])
    s = np.array([float(r.passed[cfg["strong"]]) for r in recs])
    groups = [normalize_prompt(t) for t in texts]
    say(f"\n{name}: {len(recs)} rows ({int(long.sum())} longer than the {budget}-token text budget), cheap {cfg['cheap']}, strong {cfg['strong']}")
    if note:
        say(f"  {note}")
    emb, emb_stats = embed_both(embedders, texts, long, args.seed)
    say(f"  embedded in {emb_stats['seconds']:.0f}s: head_tail {emb_stats['head_tail']}, head (long rows) {emb_stats['head_long_only']}")
    features = DEFAULT_FEATURES if args.features else ()
    target = make_target("cheap_ok")
    y = target.labels(w >= 0.5, s >= 0.5)
    folds = group_kfold(groups, k=FOLDS, seed=args.seed)
    res: dict = {
        "rows": len(recs),
        "rows_long": int(long.sum()),
        "text_budget_tokens": int(budget),
        "cheap": cfg["cheap"],
        "strong": cfg["strong"],
        "skipped": skipped,
        "note": note,
        "cheap_pass": float(w.mean()),
        "strong_pass": float(s.mean()),
        "tokens_median": float(np.median(n_cls)),
        "tokens_p90": float(np.percentile(n_cls, 90)),
        "embedding": emb_stats,
        "policies": {},
    }
    if cfg["category"] is None:
        res["long_share_by_source"] = {}
        for src in sorted({r.category for r in recs}):
            m = np.array([r.category == src for r in recs])
            res["long_share_by_source"][src] = {"rows": int(m.sum()), "long_share": float(long[m].mean())}
    oof = {}
    for p in POLICIES:
        X = feature_matrix(emb[p], texts, n_tok, features=features)
        oof[p] = oof_scores(X, y, folds, target, args.seed)
        res["policies"][p] = {"all": block(oof[p], w, s)}
        if long.any() and len(np.unique(s[long] - w[long])) > 1:
            res["policies"][p]["long_only"] = block(oof[p][long], w[long], s[long])
    boot = {"all": paired_bootstrap(oof["head"], oof["head_tail"], w, s, groups, args.bootstrap, args.seed)}
    if long.any():
        li = np.flatnonzero(long)
        boot["long_only"] = paired_bootstrap(
            oof["head"][li], oof["head_tail"][li], w[li], s[li], [groups[i] for i in li], args.bootstrap, args.seed
        )
    res["head_tail_minus_head_90ci"] = boot
    sources = sorted({r.category for r in recs if r.category})
    if len(sources) > 1:  # within one source: does the router rank questions, not just tell sources apart?
        res["within_source_long_only"] = {}
        for src in sources:
            li = np.flatnonzero(np.array([r.category == src for r in recs]) & long)
            if len(li) < 50 or len(np.unique(s[li] - w[li])) < 2:
                continue
            res["within_source_long_only"][src] = {
                **{p: block(oof[p][li], w[li], s[li]) for p in POLICIES},
                "head_tail_minus_head_90ci": paired_bootstrap(
                    oof["head"][li], oof["head_tail"][li], w[li], s[li], [groups[i] for i in li], args.bootstrap, args.seed
                ),
            }
    res["seconds"] = time.perf_counter() - t0
    return res


def print_table(results: dict) -> None:
    print("\nTruncation policy, out-of-fold (grouped 5-fold CV, calibrated logreg, cheap_ok target)")
    print("APGR higher is better (random 0.5); CPT(50%) lower is better (random 0.5)")
    print(f"{'data':<24}{'rows':<10}{'n':>6}{'head APGR':>11}{'h_t APGR':>10}{'diff [90% CI]':>24}{'head CPT50':>12}{'h_t CPT50':>11}{'diff [90% CI]':>24}")
    for name, r in results.items():
        for subset in ("all", "long_only"):
            h = r["policies"]["head"].get(subset)
            ht = r["policies"]["head_tail"].get(subset)
            if not h or not ht:
                continue
            b = r["head_tail_minus_head_90ci"].get(subset, {})
            da = f"{ht['apgr'] - h['apgr']:+.3f} [{b.get('apgr_diff_p05', float('nan')):+.3f},{b.get('apgr_diff_p95', float('nan')):+.3f}]"
            dc = f"{ht['cpt50'] - h['cpt50']:+.3f} [{b.get('cpt50_diff_p05', float('nan')):+.3f},{b.get('cpt50_diff_p95', float('nan')):+.3f}]"
            print(
                f"{name:<24}{subset:<10}{h['n']:>6}{h['apgr']:>11.3f}{ht['apgr']:>10.3f}{da:>24}{h['cpt50']:>12.3f}{ht['cpt50']:>11.3f}{dc:>24}"
            )
        for src, d in r.get("within_source_long_only", {}).items():
            h, ht, b = d["head"], d["head_tail"], d["head_tail_minus_head_90ci"]
            da = f"{ht['apgr'] - h['apgr']:+.3f} [{b['apgr_diff_p05']:+.3f},{b['apgr_diff_p95']:+.3f}]"
            dc = f"{ht['cpt50'] - h['cpt50']:+.3f} [{b['cpt50_diff_p05']:+.3f},{b['cpt50_diff_p95']:+.3f}]"
            label = "  " + src.split("/")[-1]
            print(f"{label:<24}{'long_only':<10}{h['n']:>6}{h['apgr']:>11.3f}{ht['apgr']:>10.3f}{da:>24}{h['cpt50']:>12.3f}{ht['cpt50']:>11.3f}{dc:>24}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "truncation.json")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample each log to at most this many rows")
    ap.add_argument("--no-features", dest="features", action="store_false", help="embedding only, no request features")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    args = ap.parse_args(argv)

    missing = [str(DATASETS[d]["path"]) for d in args.datasets if not DATASETS[d]["path"].is_file()]
    if missing:
        raise SystemExit(f"public data not found: {missing} (expected under ../shared/data)")
    t0 = time.perf_counter()
    cache_dir = default_cache_dir()
    exported = export_embedder(DEFAULT_EMBEDDER, cache_dir)
    embedders = policy_embedders(exported, cache_dir)
    say(f"embedder {exported.spec.name}: window {exported.spec.encoder.max_length} tokens, head_fraction "
        f"{exported.spec.encoder.head_fraction}; cache {cache_dir}; {os.cpu_count()} cores; load average {os.getloadavg()}")
    results = {name: run_dataset(name, DATASETS[name], embedders, args) for name in args.datasets}
    for e in embedders.values():
        e.close()
    print_table(results)
    out = {
        "method": (
            f"grouped {FOLDS}-fold CV (normalize_prompt groups), head {HEAD} (sigmoid-calibrated logistic regression), "
            f"target cheap_ok, inputs: embedding{' + ' + ', '.join(DEFAULT_FEATURES) if args.features else ''}; "
            "out-of-fold p_cheap_ok scored with router_model.offline.metrics; bootstrap over prompt groups"
        ),
        "embedder": exported.spec.name,
        "window_tokens": exported.spec.encoder.max_length,
        "head_fraction": exported.spec.encoder.head_fraction,
        "features": list(DEFAULT_FEATURES) if args.features else [],
        "max_rows": args.max_rows,
        "seed": args.seed,
        "datasets": results,
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    say(f"\nwritten {args.out} ({out['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
