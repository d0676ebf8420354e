"""Routing quality on routellm-mmlu with 5-fold cross-validation, grouped two ways.

Folds grouped by prompt text (no prompt on both sides) and, as a harder cross-domain test,
grouped by MMLU subject (no subject on both sides). Every router is scored on the same folds:
random (in expectation), the keyword/length heuristic, prompt length alone, MiniLM + logistic
regression on the three possible targets, the default router configuration (joint 4-class
target + request features), with/without the request features, and the oracle.

    python benchmarks/routing_quality.py [--log FILE] [--folds 5] [--quick] [--embedder model2vec]

Prints a table and writes benchmarks/results/routing_quality.json. Needs ../shared/data (or
--log); embeddings are cached, so reruns take a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from router_model.features import DEFAULT_FEATURES
from router_model.offline import metrics as M
from router_model.offline.log import read_logs
from router_model.offline.split import group_kfold, normalize_prompt
from training.cache import default_cache_dir
from training.data.public import shared_data_dir
from training.embedding.common import DEFAULT_EMBEDDER
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import OnnxEmbedder
from training.evaluate.baselines import heuristic_scores, oracle_scores
from training.head import candidate_heads, make_target, p_cheap_ok

ROOT = Path(__file__).resolve().parents[1]

CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def _unshuffled_calibration():
    """What sklearn does by default (cv=5 without shuffling), for comparison with training/head.py."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    return CalibratedClassifierCV(LogisticRegression(C=0.1, max_iter=2000), method="sigmoid", cv=5)


def cv_scores(X, w, s, folds, target_name: str, head: str) -> np.ndarray:
    """Out-of-fold router scores r = 1 - p_cheap_ok (or 1 - P(cheap passes) for 'cheap_passes')."""
    factory = _unshuffled_calibration if head == "unshuffled" else candidate_heads()[head]
    r = np.zeros(len(w))
    for tr, te in folds:
        if target_name == "cheap_passes":
            y = (w < 0.5).astype(int)  # class 1 = cheap fails
            model = factory()
            model.fit(X[tr], y[tr])
            r[te] = model.predict_proba(X[te])[:, list(model.classes_).index(1)]
            continue
        target = make_target(target_name)
        y = target.labels(w >= 0.5, s >= 0.5)
        model = factory()
        model.fit(X[tr], y[tr])
        r[te] = 1.0 - p_cheap_ok(model, X[te], target)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, default=None, help="labelled log (default: routellm-mmlu from ../shared/data)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--head", default="logreg_c0.1", help="head of the default router configuration")
    p.add_argument("--quick", action="store_true", help="only the default configuration and the baselines")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help="embedder, as router-train --embedder (e.g. model2vec, the static one); default: %(default)s")
    p.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/results/routing_quality.json (routing_quality_model2vec.json for model2vec)")
    args = p.parse_args(argv)
    if args.out is None:
        suffix = "" if args.embedder == DEFAULT_EMBEDDER else "_" + args.embedder.replace(":", "_").replace("/", "_")
        args.out = ROOT / "benchmarks" / "results" / f"routing_quality{suffix}.json"

    log_path = args.log or shared_data_dir() / "routellm-evals" / "routellm-mmlu.normalized.jsonl"
    if not log_path.exists():
        print(f"skipped: {log_path} is absent (public data not available)")
        return 0
    t0 = time.perf_counter()
    read = read_logs([log_path], models=(CHEAP, STRONG))
    recs = read.records
    texts = [r.classifier_text for r in recs]
    w = np.array([float(r.passed[CHEAP]) for r in recs])
    s = np.array([float(r.passed[STRONG]) for r in recs])
    exported = export_embedder(args.embedder, cache_dir=default_cache_dir())
    emb = OnnxEmbedder(exported, cache_dir=default_cache_dir())
    n_tokens = np.array([emb.encoder.count_tokens(r.full_text) for r in recs])
    E = emb.embed(texts, progress=True)
    print(f"{len(recs)} prompts; embedding {emb.last_stats}", flush=True)
    XF = feature_matrix(E, texts, n_tokens, features=DEFAULT_FEATURES)

    groupings = {
        "prompt_text": [normalize_prompt(t) for t in texts],
        "subject": [r.category or "" for r in recs],
    }
    configs: list[tuple[str, object]] = [
        ("heuristic (keywords/length)", lambda folds: heuristic_scores(texts)),
        ("prompt length alone", lambda folds: n_tokens.astype(float)),
    ]
    if not args.quick:
        configs += [
            ("LR, target cheap passes", lambda folds: cv_scores(E, w, s, folds, "cheap_passes", "logreg_c1")),
            ("LR, target cheap_ok (binary)", lambda folds: cv_scores(E, w, s, folds, "cheap_ok", "logreg_c1")),
            ("LR C=0.1, target joint, no features", lambda folds: cv_scores(E, w, s, folds, "joint", args.head)),
        ]
    configs += [
        (f"router default: joint + features ({args.head})", lambda folds: cv_scores(XF, w, s, folds, "joint", args.head)),
    ]
    if not args.quick:
        configs += [
            ("joint + features, stronger L2 (logreg_c0.03)", lambda folds: cv_scores(XF, w, s, folds, "joint", "logreg_c0.03")),
            ("joint + features, MLP (mlp_64)", lambda folds: cv_scores(XF, w, s, folds, "joint", "mlp_64")),
            ("joint + features, unshuffled calibration folds", lambda folds: cv_scores(XF, w, s, folds, "joint", "unshuffled")),
        ]
    configs.append(("oracle", lambda folds: oracle_scores(w, s)))
    results: dict[str, dict] = {}
    for gname, groups in groupings.items():
        folds = group_kfold(groups, k=args.folds, seed=0)
        results[gname] = {"random (expected)": {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}}
        print(f"\n5-fold CV grouped by {gname} (n={len(recs)}, q_weak={w.mean():.3f}, q_strong={s.mean():.3f})")
        print(f"{'router':<48}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}")
        print(f"{'random (expected)':<48}{0.5:>8.3f}{'50.0%':>10}{'80.0%':>10}")
        for name, fn in configs:
            t = time.perf_counter()
            b = M.routing_scores(fn(folds), w, s)
            b["seconds"] = round(time.perf_counter() - t, 1)
            results[gname][name] = b
            print(f"{name:<48}{b['apgr']:>8.3f}{b['cpt50']*100:>9.1f}%{b['cpt80']*100:>9.1f}%", flush=True)
    out = {
        "log": str(log_path.name),
        "n": len(recs),
        "cheap": CHEAP,
        "strong": STRONG,
        "folds": args.folds,
        "features": list(DEFAULT_FEATURES),
        "embedder": args.embedder,
        "head": args.head,
        "results": results,
        "reference": {"routellm_paper_best_mmlu": {"apgr": 0.603, "cpt50": 0.354, "cpt80": 0.703}},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out} ({out['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
