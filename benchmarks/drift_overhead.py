"""What the drift distance costs on the request path, and how far apart the verdicts are.

Routes the same MMLU prompts one at a time through one loaded router twice, interleaved in
rounds: with its drift reference (the graph run also returns the embedding; one 16 x 384 matrix
product gives the distance) and with the distance switched off. Reports p50 per request for both
and their ratio (absolute times drift on a shared machine; the ratio within one run does not),
the cost of the rolling window per decision, and `router-drift`'s PSI for unseen MMLU prompts and
for RouterBench MBPP prompts.

    python benchmarks/drift_overhead.py --model-dir DIR [--n 200] [--rounds 3]

DIR: a router trained on RouteLLM MMLU rows (router-train --log ../shared/data/routellm-evals/...).
Writes benchmarks/results/drift_overhead.json. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from router_model.observe.decision_log import decision_record
from router_model.observe.drift import RollingDrift, compare
from router_model.router import Router

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "drift_overhead.json"


def _prompts(relative: str, n: int, seed: int, source: str | None = None) -> list[str]:
    with (SHARED / relative).open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if source is None or r["source"] == source]
    return [r["prompt"] for r in random.Random(seed).sample(rows, min(n, len(rows)))]


def _p50_ms(router: Router, prompts: list[str]) -> float:
    times = []
    for p in prompts:
        t = time.perf_counter()
        router.predict(p)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    router = Router.load(args.model_dir, threads=1)
    centroids = router._centroids
    if centroids is None:
        raise SystemExit(f"{args.model_dir} has no drift reference with an embedding output; retrain it")
    digest = router.meta.data.trained_prompts if router.meta.data else None
    mmlu = [p for p in _prompts("routellm-evals/routellm-mmlu.normalized.jsonl", args.n * 2, seed=99)
            if digest is None or not digest.seen(p)][: args.n]  # unseen: not in the train/val prompts
    with_d, without_d = [], []
    for _ in range(args.rounds):
        router._centroids = centroids
        with_d.append(_p50_ms(router, mmlu))
        router._centroids = None
        without_d.append(_p50_ms(router, mmlu))
    router._centroids = centroids

    decisions = router.predict_batch(mmlu)
    window = RollingDrift()
    t = time.perf_counter()
    for _ in range(20):
        window.observe(router.drift_reference, router.strong_model, decisions)
    observe_us = (time.perf_counter() - t) / (20 * len(decisions)) * 1e6
    t = time.perf_counter()
    for _ in range(200):
        window.snapshot()
    snapshot_us = (time.perf_counter() - t) / 200 * 1e6

    ref = router.drift_reference
    assert ref is not None

    def verdict(prompts: list[str]) -> dict:
        recs = [decision_record(d, request_id="b", prompt="", cheap_model=router.cheap_model, strong_model=router.strong_model)
                for d in router.predict_batch(prompts)]
        rep = compare(ref, recs)
        return {"status": rep.status, "n": rep.n_records, **{f"psi_{q.name}": q.psi for q in rep.quantities},
                **{s.name: s.observed for s in rep.shares}}

    mbpp = _prompts("routerbench-subset/routerbench-subset.normalized.jsonl", args.n, seed=1, source="routerbench/mbpp")
    result = {
        "model_dir": str(args.model_dir),
        "graph": router.graph,
        "n_prompts": len(mmlu),
        "rounds": args.rounds,
        "p50_ms_with_distance": statistics.median(with_d),
        "p50_ms_without_distance": statistics.median(without_d),
        "ratio_with_over_without": statistics.median(with_d) / statistics.median(without_d),
        "rolling_observe_us_per_decision": observe_us,
        "rolling_snapshot_us": snapshot_us,
        "mmlu_unseen": verdict(mmlu),
        "routerbench_mbpp": verdict(mbpp),
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
