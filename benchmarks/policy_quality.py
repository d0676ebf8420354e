"""How a day-0 policy routes the public data, beside random routing and the keyword/length heuristic.

The policy uses no labels, so every public row is a test row. For each file in ../shared/data (its
main pair), the policy's p_cheap_ok ranks the prompts (APGR, CPT from router_model/offline/metrics.py)
and its threshold gives a strong-call share and the quality kept; also which routes fired. The four
demo prompts of scripts/quickstart.sh are routed through the built artifact (`Router`).

Scores over the public rows come from the numpy reference of the policy head on cached fp32
embeddings (the fp32 graph matches it to ~1e-6; checked here on a sample through `Router`, with the
served graph's decision agreement).

    python benchmarks/policy_quality.py [--model-dir DIR] [--policy FILE] [--sample 200]

Writes benchmarks/results/policy_quality.json. Without --model-dir the policy is built into a
temporary directory first (a few minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from router_model.offline import metrics as M
from router_model.offline.log import ReadOptions, read_logs
from router_model.router import Router
from training.cache import default_cache_dir
from training.data.public import shared_data_dir
from training.embedding.export import export_embedder
from training.embedding.onnx_embedder import OnnxEmbedder
from training.evaluate.baselines import heuristic_scores, random_scores
from training.policy.builder import POLICY_FILE, BuildConfig, _examples, build_policy
from training.policy.schema import DEFAULT_POLICY, load_policy
from training.policy.scoring import policy_matrix, reference_probabilities

ROOT = Path(__file__).resolve().parents[1]
SETS = {  # name: (file under ../shared/data, cheap, strong)
    "routellm-mmlu": ("routellm-evals/routellm-mmlu.normalized.jsonl", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                      "gpt-4-1106-preview"),
    "mt-bench": ("routellm-evals/routellm-mtbench.normalized.jsonl", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                 "gpt-4-1106-preview"),
    "routerbench": ("routerbench-subset/routerbench-subset.normalized.jsonl", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"),
    "mmlu-pro": ("mmlu-pro/mmlu-pro.normalized.jsonl", "gemini-1.5-flash-002", "gpt-4o-2024-05-13"),
}
# The four prompts scripts/quickstart.sh routes (README), and where the field's guidance sends them.
DEMO = (
    ("Classify the sentiment of this review as positive or negative: 'Arrived late but works great.'", "cheap"),
    ("Extract the invoice number and total from: Invoice #4471, total due EUR 312.50 by 1 May.", "cheap"),
    ("Prove that every finite integral domain is a field, then generalise the argument to division rings.", "strong"),
    ("Implement a lock-free multi-producer multi-consumer queue in C++ and explain the memory ordering of each atomic.",
     "strong"),
)
RANDOM_SEEDS = 50


def _block(r: np.ndarray, w: np.ndarray, s: np.ndarray) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in M.routing_scores(r, w, s).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="a built policy artifact (default: build --policy into a temp dir)")
    p.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    p.add_argument("--sample", type=int, default=200, help="rows per set routed through Router to check the reference")
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of %(default)s")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "policy_quality.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cache = default_cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        build_seconds = None
        if model_dir is None:
            model_dir = Path(tmp) / "policy"
            tb = time.perf_counter()
            build_policy(BuildConfig(policy=args.policy, out_dir=model_dir, cache_dir=cache), say=print)
            build_seconds = round(time.perf_counter() - tb, 1)
        out = run(model_dir, cache, args.sample, [x.strip() for x in args.sets.split(",") if x.strip()])
    out["build_seconds"] = build_seconds
    out["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out} ({out['seconds']:.0f}s)")
    return 0


def run(model_dir: Path, cache: Path, sample: int, names: list[str]) -> dict:
    router = Router.load(model_dir)
    fp32 = Router.load(model_dir, graph="fp32")
    meta = router.meta
    policy = load_policy(model_dir / POLICY_FILE)
    exported = export_embedder(meta.embedder.name, cache)
    emb = OnnxEmbedder(exported, cache_dir=cache)
    m = policy_matrix(policy, emb.embed(_examples(policy)))
    classes = list(meta.classes)
    t = meta.threshold

    print(f"\npolicy {policy.name!r} ({meta.artifact_version}, served graph {router.graph}), threshold {t}")
    print("demo prompts (scripts/quickstart.sh):")
    demo = []
    for prompt, guidance in DEMO:
        d = router.predict(prompt)
        tier = "cheap" if d.model == meta.cheap_model else "strong"
        demo.append({"prompt": prompt, "guidance": guidance, "tier": tier, "model": d.model, "reason": d.reason,
                     "p_cheap_ok": round(float(d.p_cheap_ok or 0.0), 4), "agrees_with_guidance": tier == guidance})
        print(f"  {tier:<6} (guidance {guidance:<6}) p_cheap_ok {d.p_cheap_ok:.3f}  {d.reason:<28} {prompt[:60]}")

    sets: dict[str, dict] = {}
    data = shared_data_dir()
    for name in names:
        rel, cheap, strong = SETS[name]
        path = data / rel
        if not path.exists():
            print(f"{name}: skipped ({path} absent)")
            continue
        read = read_logs([path], models=(cheap, strong), options=ReadOptions(pass_threshold=0.8, skip_invalid=True))
        recs = read.records
        texts = [r.classifier_text for r in recs]
        w = np.array([float(r.passed[cheap]) for r in recs])
        s = np.array([float(r.passed[strong]) for r in recs])
        E = emb.embed(texts, progress=False)
        probs = reference_probabilities(m, policy.scoring, E)
        p_ok = probs[:, : m.n_cheap].sum(axis=1)
        r = 1.0 - p_ok
        rng = np.random.default_rng(0)
        pick = sorted(rng.choice(len(recs), size=min(sample, len(recs)), replace=False).tolist())
        served = router.p_cheap_ok([texts[i] for i in pick])
        p32 = fp32.p_cheap_ok([texts[i] for i in pick])
        rand = [M.apgr(random_scores(len(w), seed=k), w, s) for k in range(RANDOM_SEEDS)]
        cheap_side = p_ok >= t
        top = np.where(cheap_side, probs[:, : m.n_cheap].argmax(axis=1), m.n_cheap + probs[:, m.n_cheap :].argmax(axis=1))
        q_strong = float(s.mean())
        q_routed = float(np.where(cheap_side, w, s).mean())
        sets[name] = {
            "n": len(recs), "cheap": cheap, "strong": strong,
            "q_cheap": round(float(w.mean()), 4), "q_strong": round(q_strong, 4),
            "policy": _block(r, w, s),
            "random_expected": {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8},
            "random_seeds": {"apgr_mean": round(float(np.mean(rand)), 4), "apgr_std": round(float(np.std(rand)), 4),
                             "seeds": RANDOM_SEEDS},
            "heuristic": _block(heuristic_scores(texts), w, s),
            "at_threshold": {"strong_share": round(float(1 - cheap_side.mean()), 4),
                             "quality_vs_strong": round(q_routed / q_strong, 4) if q_strong else None,
                             "routes": {classes[k]: int(v) for k, v in Counter(top.tolist()).most_common()}},
            "reference_check": {"n": len(pick), "fp32_graph_max_abs_diff": float(np.abs(p32 - p_ok[pick]).max()),
                                f"{router.graph}_decision_agreement": float(np.mean((served >= t) == (p_ok[pick] >= t)))},
        }
        b = sets[name]
        print(f"\n{name} (n={b['n']}, cheap {cheap} {b['q_cheap']:.3f}, strong {strong} {b['q_strong']:.3f})")
        print(f"  {'router':<26}{'APGR':>7}{'CPT(50%)':>10}{'CPT(80%)':>10}")
        print(f"  {'random (expected)':<26}{0.5:>7.3f}{'50.0%':>10}{'80.0%':>10}   "
              f"(seeded: {b['random_seeds']['apgr_mean']:.3f} +- {b['random_seeds']['apgr_std']:.3f})")
        for label, key in (("heuristic (keywords/len)", "heuristic"), ("day-0 policy", "policy")):
            x = b[key]
            print(f"  {label:<26}{x['apgr']:>7.3f}{x['cpt50'] * 100:>9.1f}%{x['cpt80'] * 100:>9.1f}%")
        at = b["at_threshold"]
        print(f"  at threshold {t}: strong share {at['strong_share']:.3f}, quality vs strong {at['quality_vs_strong']:.3f}; "
              f"routes {at['routes']}")
        print(f"  reference check on {len(pick)} rows: {b['reference_check']}")
    emb.close()
    return {"model_dir": str(model_dir), "artifact_version": meta.artifact_version, "policy": policy.name,
            "threshold": t, "served_graph": router.graph, "demo": demo, "sets": sets,
            "note": "The policy uses no labels; all rows are test rows. APGR depends only on the ranking "
                    "(sharpness and bias do not change it); the threshold sets the strong share."}


if __name__ == "__main__":
    sys.exit(main())
