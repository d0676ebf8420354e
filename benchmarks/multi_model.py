"""N-model routing (issue 16) on routerbench-subset (11 models) and mmlu-pro (6 models).

Held-out half by prompt hash (train 35% / validation 15% / test 50%, `assign_splits`, seed 0).
On mmlu-pro, a question derived from MMLU takes the split key of the routellm-mmlu question with
the same stem (text before the options), so it lands on the same side as that question would
with these fractions. Every router is scored on the same test rows, RouterBench-style (the
non-decreasing convex hull of its sweep; `router_model/offline/multi_evaluation.py`):

* `issue_baseline`: the issue's reference: one uncalibrated LR (C=1) per model,
  argmax P(pass) - lambda * mean cost;
* the shipped heads (calibrated pass and ok heads per model, C chosen on validation) with each
  rule family (`cheapest_ok`, `cheapest_pass`, `lambda` with per-request cost estimates), and
  the operating point the validation goal (quality floor 0.95 of the best single model on the
  training rows, certified at risk 0.05 with one fixed sequence over every family's points, ordered
  on the training rows) picks, beside the earlier union bound over the families (`certificate`);
* two measured alternatives to the shipped heads (`training/multi/knn.py`, not served): kNN per
  model over the embedding (`knn_<rule>`) and the LR/kNN blend (`lr_knn_blend_<rule>`), k, T,
  prior weight and blend weight chosen by validation log-loss, each with the rule family of its
  best validation AIQ.

    python benchmarks/multi_model.py [--data routerbench,mmlu-pro] [--max-rows N]

Prints the figures and writes benchmarks/results/multi_model.json. Needs ../shared/data.
Embeddings are cached under $ROUTER_CACHE_DIR (first run: ~15k texts to embed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from router_model.cost import PriceTable
from router_model.features import DEFAULT_FEATURES
from router_model.multi import RULE_FAMILIES, choose
from router_model.offline.multi_data import build_multi_dataset, read_multi
from router_model.offline.multi_evaluation import eval_rows, evaluate_multi, finite, format_report
from router_model.offline.split import normalize_prompt
from training.cache import default_cache_dir
from training.data.public import shared_data_dir
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import OnnxEmbedder
from training.multi.heads import PassHeads, ece_per_model, fit_heads
from training.multi.knn import fit_blend, fit_knn_heads
from training.multi.rule import (
    MultiGoal,
    OrderRows,
    RuleChoice,
    Sweep,
    choose_rule,
    expected_costs,
    fit_cost_models,
    reference_model,
    sweep,
)

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.35, 0.15, 0.5)
DATA = {
    "routerbench": "routerbench-subset/routerbench-subset.normalized.jsonl",
    "mmlu-pro": "mmlu-pro/mmlu-pro.normalized.jsonl",
}
MMLU = "routellm-evals/routellm-mmlu.normalized.jsonl"


# The packaged table deliberately leaves the dearer May-2024 GPT-4o snapshot out (router_model/prices.json
# notes); mmlu-pro's GPT-4o run is that snapshot, priced here as a --prices file would.
EXTRA_PRICES = {"models": {"gpt-4o-2024-05-13": {"input": 5.0, "output": 15.0}}}


def _prices() -> PriceTable:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prices.json"
        path.write_text(json.dumps(EXTRA_PRICES))
        return PriceTable.load(path)


def _stem(text: str, marker: str) -> str:
    return normalize_prompt(text.split(marker, 1)[0])


def mmlu_aligned_keys(log, shared: Path) -> tuple[list[str], int]:
    """Split keys for mmlu-pro rows: the routellm-mmlu question's key when the stems match."""
    by_stem: dict[str, str] = {}
    with open(shared / MMLU, encoding="utf-8") as fh:
        for line in fh:
            prompt = json.loads(line)["prompt"]
            by_stem.setdefault(_stem(prompt, "\nA. "), normalize_prompt(prompt))
    src: dict[int, str] = {}
    want = {r.line_no for r in log.records}
    with open(log.records[0].source_file, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if i in want:
                src[i] = (json.loads(line).get("meta") or {}).get("src", "")
    keys, matched = [], 0
    for r in log.records:
        key = normalize_prompt(r.classifier_text)
        if src.get(r.line_no, "").startswith("ori_mmlu"):
            hit = by_stem.get(_stem(r.classifier_text, "\nOptions:"))
            if hit is not None:
                key, matched = hit, matched + 1
        keys.append(key)
    return keys, matched


def issue_baseline(X, ds, tr, te) -> tuple[Sweep, dict]:
    """One plain LR (C=1) per model; argmax P - lambda * mean cost per call (the issue's reference)."""
    from sklearn.linear_model import LogisticRegression

    P = np.zeros((len(te), len(ds.models)))
    for j in range(len(ds.models)):
        rows = tr[~np.isnan(ds.passed[tr, j])]
        y = ds.passed[rows, j].astype(int)
        if len(np.unique(y)) < 2:
            P[:, j] = y.mean() if len(y) else 0.5
            continue
        model = LogisticRegression(C=1.0, max_iter=2000).fit(X[rows], y)
        P[:, j] = model.predict_proba(X[te])[:, 1]
    mean_cost = ds.cost[tr].mean(axis=0)
    est = np.tile(mean_cost, (len(te), 1))
    keep = eval_rows(ds.passed[te])
    sw = sweep("lambda", P[keep], P[keep], est_cost=est[keep], passed=ds.passed[te][keep], cost=ds.cost[te][keep])
    return sw, ece_per_model(P, ds.passed[te], ds.models)


def head_variants(X, ds, tr, va, te, heads: PassHeads, cms, dim: int) -> tuple[dict[str, Sweep], dict]:
    """The kNN heads and the LR/kNN blend, each with its best-validation-AIQ rule, swept on the test rows."""
    t0 = time.perf_counter()
    knn = fit_knn_heads(X, ds.passed, ds.models, train_rows=tr, val_rows=va, dim=dim)
    knn_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    blend = fit_blend(heads, knn, X, passed=ds.passed, val_rows=va)
    blend_s = time.perf_counter() - t0
    keep_t = eval_rows(ds.passed[te])
    Ev, Et = expected_costs(cms, ds.n_tokens[va]), expected_costs(cms, ds.n_tokens[te])
    sweeps, info = {}, {}
    for label, h, extra in (("knn", knn, {**knn.validation, "fit_seconds": knn_s}),
                            ("lr_knn_blend", blend, {"w_lr": blend.w, "fit_seconds": blend_s})):
        Pv, Kv = h.p_pass(X[va]), h.p_ok(X[va])
        fams = choose_rule(Pv, Kv, Ev, passed=ds.passed[va], cost=ds.cost[va], models=ds.models).families
        kind = max(fams, key=lambda k: fams[k]["val_aiq"])
        Pt, Kt = h.p_pass(X[te])[keep_t], h.p_ok(X[te])[keep_t]
        sweeps[f"{label}_{kind}"] = sweep(kind, Pt, Kt, est_cost=Et[keep_t], passed=ds.passed[te][keep_t],
                                          cost=ds.cost[te][keep_t])
        info[label] = {**extra, "rule": kind, "val_aiq_by_rule": {k: v["val_aiq"] for k, v in fams.items()}}
    return sweeps, info


def run(name: str, path: Path, shared: Path, cache: Path, max_rows: int | None, say) -> dict:
    t0 = time.perf_counter()
    log = read_multi([path])
    if max_rows and max_rows < len(log.records):  # an evenly spread sample (the files are grouped by task/subject)
        pick = np.unique(np.linspace(0, len(log.records) - 1, max_rows).astype(int))
        log = type(log)(log.read, tuple(log.records[i] for i in pick), log.models, log.passed[pick], log.row_cost[pick], 0)
    exported = export_embedder("sentence-transformers/all-MiniLM-L6-v2", cache, truncation="head_tail")
    embedder = OnnxEmbedder(exported, cache_dir=cache)
    keys, matched = (mmlu_aligned_keys(log, shared) if name == "mmlu-pro" else (None, 0))
    ds = build_multi_dataset(log, embedder.encoder, _prices(), fractions=FRACTIONS, seed=0, group_keys=keys)
    emb = embedder.embed(ds.texts)
    embed_stats = dict(embedder.last_stats)
    embedder.close()
    X = feature_matrix(emb, ds.texts, ds.n_tokens, features=DEFAULT_FEATURES)
    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    say(f"[{name}] {len(ds.texts)} rows, {len(ds.models)} models, split {ds.split_counts()}"
        + (f", {matched} MMLU-derived questions keyed to routellm-mmlu" if name == "mmlu-pro" else ""))
    t1 = time.perf_counter()
    heads: PassHeads = fit_heads(X, ds.passed, ds.models, train_rows=tr, val_rows=va, say=lambda _: None)
    fit_s = time.perf_counter() - t1
    cms = fit_cost_models(ds.n_tokens[tr], ds.cost[tr], ds.models)

    def scored(rows):
        return heads.p_pass(X[rows]), heads.p_ok(X[rows]), expected_costs(cms, ds.n_tokens[rows])

    Pv, Kv, Ev = scored(va)
    # as router-train does: the reference and the lambda scale from the training rows, and the single
    # certified sequence ordered on the training rows' head outputs and expected dollars
    ref = reference_model(ds.passed[tr], ds.cost[tr])
    scale = max(cm.mean for cm in cms) or None
    goal = MultiGoal("quality_floor", 0.95)
    t2 = time.perf_counter()
    choice = choose_rule(Pv, Kv, Ev, passed=ds.passed[va], cost=ds.cost[va], models=ds.models, goal=goal,
                         reference=ref, lambda_scale=scale, order_rows=OrderRows(*scored(tr)))
    rule_s = time.perf_counter() - t2
    every = choose_rule(Pv, Kv, Ev, passed=ds.passed[va], cost=ds.cost[va], models=ds.models, goal=goal,
                        reference=ref, lambda_scale=scale, order_rows=OrderRows(*scored(tr)), frontier=False)
    union = choose_rule(Pv, Kv, Ev, passed=ds.passed[va], cost=ds.cost[va], models=ds.models, goal=goal,
                        reference=ref, lambda_scale=scale)  # the earlier certificate: delta / 3 per family
    Pt, Kt, Et = scored(te)
    keep = eval_rows(ds.passed[te])
    Y, C = ds.passed[te][keep], ds.cost[te][keep]
    keep_v = eval_rows(ds.passed[va])
    Yv, Cv = ds.passed[va][keep_v], ds.cost[va][keep_v]

    def certified(ch: RuleChoice) -> dict:
        """The certified policy on validation (its cost as a share of the reference's there) and on test."""
        rows_t = np.arange(len(Y))
        pk = choose(ch.kind, ch.value, Pt[keep], Kt[keep], Et[keep])
        return {"method": ch.method, "kind": ch.kind, "value": float(ch.value), "certified": ch.certified,
                "bound_quality_vs_reference": ch.bound, "reference": ds.models[ref], "why": ch.why,
                "val_cost_vs_reference": ch.val_cost_per_request / float(Cv[:, ref].mean()),
                "val_quality_vs_reference": ch.val_quality / float(Yv[:, ref].mean()),
                "test_cost_vs_reference": float(C[rows_t, pk].sum() / C[:, ref].sum()),
                "test_quality_vs_reference": float(Y[rows_t, pk].mean() / Y[:, ref].mean())}
    sweeps = {k: sweep(k, Pt[keep], Kt[keep], est_cost=Et[keep], passed=Y, cost=C) for k in RULE_FAMILIES}
    base_sweep, base_ece = issue_baseline(X, ds, tr, te)
    variant_sweeps, variants = head_variants(X, ds, tr, va, te, heads, cms, emb.shape[1])
    sweeps = {"issue_baseline": base_sweep, **sweeps, **variant_sweeps}
    pick = choose(choice.kind, choice.value, Pt[keep], Kt[keep], Et[keep])
    rows = np.arange(len(Y))
    chosen = {"kind": choice.kind, "value": float(choice.value), "cost": float(C[rows, pick].sum()),
              "quality": float(Y[rows, pick].mean())}
    rep = evaluate_multi(ds.models, ds.passed[te], ds.cost[te], router_sweeps=sweeps, chosen=chosen)
    rep["ece_per_model"] = ece_per_model(Pt, ds.passed[te], ds.models)
    rep["ece_per_model_issue_baseline"] = base_ece
    rep["head_variants"] = variants
    rep["policy_choice"] = {"kind": choice.kind, "value": choice.value, "why": choice.why, "families": choice.families,
                            "method": choice.method, "bound": choice.bound}
    rep["certificate"] = {"one_sequence": certified(choice), "one_sequence_every_point": certified(every),
                          "union_bound_over_rules": certified(union),
                          "rule_seconds_one_sequence": rule_s}
    rep["cost_source"] = ds.cost_source
    rep["split"] = ds.split_counts()
    rep["mmlu_keyed_to_routellm"] = matched
    rep["seconds"] = {"total": time.perf_counter() - t0, "fit_heads": fit_s, "embedding": embed_stats.get("seconds", 0.0),
                      "embedded_new": embed_stats.get("embedded", 0.0)}
    say(format_report(rep))
    say("  ECE per model (shipped heads / issue baseline): " + ", ".join(
        f"{m.split('/')[-1]} {v['ece']:.3f}/{base_ece[m]['ece']:.3f}" for m, v in rep["ece_per_model"].items()))
    say(f"  policy chosen on validation: {choice.why}")
    for label, c in rep["certificate"].items():
        if isinstance(c, dict):
            say(f"  {label}: {c['kind']} ({c['method']}): test cost {c['test_cost_vs_reference']:.1%} of "
                f"{c['reference']}, quality {c['test_quality_vs_reference']:.1%}; validation cost "
                f"{c['val_cost_vs_reference']:.1%}, certified bound {c['bound_quality_vs_reference']}")
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="routerbench,mmlu-pro", help="comma-separated: routerbench, mmlu-pro")
    p.add_argument("--max-rows", type=int, default=None, help="an evenly spread sample of N rows per data set (smoke runs, or a cold cache)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multi_model.json")
    args = p.parse_args(argv)
    shared = shared_data_dir()
    if shared is None or not (Path(shared) / DATA["routerbench"]).exists():
        print("multi_model: ../shared/data is not available; nothing to measure", file=sys.stderr)
        return 2
    shared = Path(shared)
    cache = default_cache_dir()
    load_start = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    results = {"conditions": {"fractions": FRACTIONS, "seed": 0, "embedder": "all-MiniLM-L6-v2 (head_tail, 256 tokens)",
                              "features": list(DEFAULT_FEATURES), "goal": "quality_floor 0.95 of the best single model",
                              "frontier": "RouterBench non-decreasing convex hull; AIQ over the single models' cost range"},
               "data": {}}
    if args.out.exists():  # one data set at a time adds to (or replaces its entry in) the results file
        results["data"] = json.loads(args.out.read_text()).get("data", {})
    for name in [d.strip() for d in args.data.split(",") if d.strip()]:
        if name not in DATA:
            print(f"multi_model: unknown data set {name!r}; known: {sorted(DATA)}", file=sys.stderr)
            return 2
        results["data"][name] = {"max_rows": args.max_rows, **run(name, shared / DATA[name], shared, cache, args.max_rows, print)}
    results["conditions"]["loadavg_1_5_15"] = {
        "start": load_start, "end": Path("/proc/loadavg").read_text().split()[:3] if load_start else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(results), indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
