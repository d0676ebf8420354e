"""Decision latency, batch throughput, import time and memory of the torch-free inference path.

What is measured (all on this machine, CPU only; absolute figures drift with background load, so
compare ratios inside one run and read `load_average` in the JSON):

* single-request latency of `Router.predict` (parsing, tokenising, features, session.run and the
  decision included) for real MMLU text cut to about 16, 64, 256 and 1024 tokens (counted with
  the artifact's tokenizer, special tokens excluded; 1024 exceeds the 256-token window and so
  exercises truncation), for the int8 and the fp32 graph at 1 and 2 onnxruntime threads. All
  configurations are loaded in one process and timed in alternating rounds, so background load
  hits them alike.
* where the time of one request goes: parse_request, encode_one, request_features, pad,
  session.run on ready feeds, and the rest (Python overhead of the Router), per length.
* batch throughput: `predict_batch` of 64 real prompts, prompts/s, int8 and fp32 at 1 and 2 threads.
* import time of `import router_model; from router_model import Router` in a fresh interpreter
  (median of 5), and the cold start (import + load + first decision).
* resident memory (VmRSS, peak VmHWM) of a fresh inference-only process that loads the router and
  routes 100 prompts one at a time, int8 and fp32; it also checks that torch, sklearn,
  sentence_transformers and transformers were never imported.
* a sentence-transformers (torch, 1 thread) reference for the 64-token prompt, in its own process,
  when torch is importable (the training env); it embeds only, so it is a lower bound for a torch
  router.

    python benchmarks/latency.py [--model-dir artifacts/router] [--out benchmarks/results/latency.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from router_model.artifact import GRAPHS
from router_model.features import request_features
from router_model.request import parse_request
from router_model.router import Router

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from latency_processes import MEMORY_SCRIPT, TORCH_SCRIPT, import_time, run_py, torch_available  # noqa: E402 - beside this script

DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "routellm-evals" / "routellm-mmlu.normalized.jsonl"
LENGTHS = (16, 64, 256, 1024)
THREADS = (1, 2)
CALLS = {16: 300, 64: 300, 256: 300, 1024: 200}
QUICK_CALLS = {16: 40, 64: 40, 256: 30, 1024: 20}
VARIANTS = 16  # distinct texts per length, cycled
BATCH = 64
TARGETS = {"p50_ms": 5.0, "p99_ms": 10.0, "rss_mb": 150.0, "import_s": 0.3}
PEERS_MS = (40, 90)


# --- prompts -------------------------------------------------------------------------------
def read_prompts(path: Path, limit: int = 4000) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"prompt file {path} not found (the public data lives in ../shared/data); pass --prompts")
    out: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = json.loads(line).get("prompt")
            if isinstance(p, str) and p.strip():
                out.append(p)
            if len(out) >= limit:
                break
    return out


def build_length_prompts(router: Router, pool: list[str], length: int, n: int, seed: int) -> tuple[list[str], list[int]]:
    """n texts of `length` tokens: real prompts concatenated, then cut at a token boundary."""
    enc = router._encoder
    rng = random.Random(seed * 7919 + length)
    texts, counts = [], []
    for _ in range(n):
        parts: list[str] = []
        text = ""
        while True:
            parts.append(rng.choice(pool))
            text = "\n\n".join(parts)
            e = enc._tok.encode(text, add_special_tokens=False)
            if len(e.ids) >= length:
                break
        cut = text[: e.offsets[length - 1][1]]
        texts.append(cut)
        counts.append(enc.count_tokens(cut))
    return texts, counts


# --- timing helpers ------------------------------------------------------------------------
def pct(values_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values_s) * 1000.0, q))


def summary(values_s: list[float]) -> dict[str, float]:
    return {
        "n": len(values_s),
        "p50_ms": pct(values_s, 50),
        "p90_ms": pct(values_s, 90),
        "p99_ms": pct(values_s, 99),
        "mean_ms": float(np.mean(values_s) * 1000.0),
    }


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- single-request latency ----------------------------------------------------------------
def latency(routers: dict[tuple[str, int], Router], prompts: dict[int, list[str]], calls: dict[int, int], rounds: int):
    results: dict[str, dict] = {}
    for length, texts in prompts.items():
        n_total = calls[length]
        block = max(1, n_total // rounds)
        samples: dict[tuple[str, int], list[float]] = {k: [] for k in routers}
        cpu: dict[tuple[str, int], list[float]] = {k: [] for k in routers}
        for r in routers.values():  # warm-up
            for t in texts[:8]:
                r.predict(t)
        i = 0
        keys = list(routers)
        for rnd in range(rounds):
            order = keys if rnd % 2 == 0 else keys[::-1]
            for k in order:
                r = routers[k]
                for _ in range(block):
                    t = texts[i % len(texts)]
                    i += 1
                    # CPU time: of this thread with 1 onnxruntime thread (the graph runs on the
                    # caller's thread), of the whole process with 2 (includes the pool's spinning).
                    clock = time.thread_time if k[1] == 1 else time.process_time
                    c0 = clock()
                    t0 = time.perf_counter()
                    r.predict(t)
                    samples[k].append(time.perf_counter() - t0)
                    cpu[k].append(clock() - c0)
        for (graph, threads), v in samples.items():
            c = cpu[(graph, threads)]
            results[f"{graph}/t{threads}/{length}"] = {
                "graph": graph,
                "threads": threads,
                "tokens": length,
                **summary(v),
                "cpu_p50_ms": pct(c, 50),
                "cpu_p99_ms": pct(c, 99),
                "cpu_clock": "thread" if threads == 1 else "process",
            }
    return results


def breakdown(router: Router, texts: list[str], n: int) -> dict[str, float]:
    """Median ms of each stage of one request, and the remainder (Python overhead)."""
    enc = router._encoder
    names = router.meta.features
    stages = {k: [] for k in ("parse_request", "encode_one", "request_features", "pad", "session_run", "predict")}
    for _ in range(3):
        router.predict(texts[0])
    for j in range(n):
        t = texts[j % len(texts)]
        t0 = time.perf_counter()
        parsed = parse_request(t)
        t1 = time.perf_counter()
        e, ntok = enc.encode_one(parsed.classifier_text)
        t2 = time.perf_counter()
        feats = request_features([t], [ntok], names)
        t3 = time.perf_counter()
        feeds = enc.pad([e])
        t4 = time.perf_counter()
        feeds["features"] = feats
        router._session.run(["probabilities"], feeds)
        t5 = time.perf_counter()
        router.predict(t)
        t6 = time.perf_counter()
        for k, a, b in (
            ("parse_request", t0, t1),
            ("encode_one", t1, t2),
            ("request_features", t2, t3),
            ("pad", t3, t4),
            ("session_run", t4, t5),
            ("predict", t5, t6),
        ):
            stages[k].append(b - a)
    med = {k: float(np.median(v) * 1000.0) for k, v in stages.items()}
    parts = sum(med[k] for k in ("parse_request", "encode_one", "request_features", "pad", "session_run"))
    med["python_overhead"] = max(0.0, med["predict"] - parts)
    return med


def throughput(routers: dict[tuple[str, int], Router], batch: list[str], reps: int) -> dict[str, dict]:
    out: dict[str, list[float]] = {f"{g}/t{t}": [] for g, t in routers}
    for r in routers.values():
        r.predict_batch(batch)
    for rnd in range(reps):
        items = list(routers.items())
        for (g, t), r in items if rnd % 2 == 0 else items[::-1]:
            t0 = time.perf_counter()
            r.predict_batch(batch)
            out[f"{g}/t{t}"].append(time.perf_counter() - t0)
    return {
        k: {"batch": len(batch), "reps": len(v), "median_s": float(np.median(v)), "prompts_per_s": len(batch) / float(np.median(v))}
        for k, v in out.items()
    }


# --- report --------------------------------------------------------------------------------
def ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def print_report(res: dict) -> None:
    lat = res["latency"]
    print(f"\nSingle-request decision latency, Router.predict, ms (load average before/after: {res['load_average_before']} / {res['load_average_after']})")
    print(f"{'graph':<6}{'thr':>4}" + "".join(f"{f'{L} tok p50/p99 (cpu p50)':>30}" for L in res["lengths"]))
    for g in GRAPHS:
        for t in THREADS:
            row = f"{g:<6}{t:>4}"
            for L in res["lengths"]:
                c = lat.get(f"{g}/t{t}/{L}")
                row += f"{c['p50_ms']:>13.2f} / {c['p99_ms']:<6.2f} ({c['cpu_p50_ms']:6.2f})" if c else f"{'-':>30}"
            print(row)
    print("wall-clock ms; (cpu p50) = CPU ms per request: this thread's at 1 thread, the process's at 2 threads (pool spinning")
    print("included). Wall >> CPU means the request waited for a core (background load on the shared machine).")
    if "sentence_transformers_t1_64" in res:
        st = res["sentence_transformers_t1_64"]
        print(f"{'torch (sentence-transformers), 1 thread, 64 tok (embedding only)':<56} p50 {st['p50_ms']:.2f}  p99 {st['p99_ms']:.2f}")

    print("\nWhere the time goes, 1 thread (median ms per request)")
    cols = ("parse_request", "encode_one", "request_features", "pad", "session_run", "python_overhead", "predict")
    print(f"{'graph':<6}{'tok':>6}" + "".join(f"{c:>18}" for c in cols))
    for key, b in res["breakdown"].items():
        g, L = key.split("/")
        print(f"{g:<6}{L:>6}" + "".join(f"{b[c]:>18.3f}" for c in cols))

    print(f"\nBatch throughput, predict_batch of {BATCH} real prompts")
    for k, v in res["throughput"].items():
        print(f"  {k:<10} {v['prompts_per_s']:8.0f} prompts/s  ({v['median_s'] * 1000:.0f} ms per batch, median of {v['reps']})")

    imp = res["import"]
    print(
        f"\nImport `import router_model; from router_model import Router`: median {imp['import_s']:.3f} s of {imp['runs']} fresh "
        f"processes (loads {imp['loaded_by_import']}); cold start incl. load + first decision {imp['cold_start_s']:.2f} s"
    )
    print("\nInference-only process (load router, route 100 prompts one at a time)")
    for m in res["memory"]:
        print(
            f"  {m['graph']:<5} RSS {m['rss_mb']:6.1f} MB  peak {m['peak_rss_mb']:6.1f} MB  (bare python {m['rss_start_mb']:.1f}, after import "
            f"{m['rss_after_import_mb']:.1f}, after load {m['rss_after_load_mb']:.1f})  heavy modules loaded: {m['forbidden_loaded'] or 'none'}"
        )
    if "sentence_transformers_t1_64" in res:
        st = res["sentence_transformers_t1_64"]
        print(f"  torch process (sentence-transformers): RSS {st['rss_mb']:.0f} MB, import {st['import_s']:.1f} s")

    print(f"\nTargets (peers publish {PEERS_MS[0]}-{PEERS_MS[1]} ms per decision)")
    for line in res["targets"]:
        print(f"  {line['check']:<58} {line['value']:>10} {line['target']:>12}  {ok(line['pass'])}")
    print(f"\nartifact default graph: {res['artifact']['default_graph']}; int8 vs fp32 on the test split: "
          f"decision agreement {res['artifact'].get('int8_decision_agreement')}, APGR diff {res['artifact'].get('int8_apgr_abs_diff')}")


def targets(res: dict) -> list[dict]:
    out = []
    for g in GRAPHS:
        c = res["latency"].get(f"{g}/t1/64")
        if c:
            out.append({"check": f"{g}, 1 thread, 64-token prompt, p50", "value": f"{c['p50_ms']:.2f} ms", "target": f"<= {TARGETS['p50_ms']} ms", "pass": c["p50_ms"] <= TARGETS["p50_ms"]})
            out.append({"check": f"{g}, 1 thread, 64-token prompt, p99", "value": f"{c['p99_ms']:.2f} ms", "target": f"<= {TARGETS['p99_ms']} ms", "pass": c["p99_ms"] <= TARGETS["p99_ms"]})
            out.append({"check": f"{g}, 1 thread, 64-token prompt, CPU-time p50 (info)", "value": f"{c['cpu_p50_ms']:.2f} ms", "target": f"<= {TARGETS['p50_ms']} ms", "pass": c["cpu_p50_ms"] <= TARGETS["p50_ms"]})
    for m in res["memory"]:
        out.append({"check": f"{m['graph']}, inference-only process resident (VmRSS)", "value": f"{m['rss_mb']:.0f} MB", "target": f"< {TARGETS['rss_mb']:.0f} MB", "pass": m["rss_mb"] < TARGETS["rss_mb"]})
        out.append({"check": f"{m['graph']}, no torch/sklearn/sentence-transformers loaded", "value": str(len(m["forbidden_loaded"])), "target": "0", "pass": not m["forbidden_loaded"]})
    imp = res["import"]["import_s"]
    out.append({"check": "import router_model + Router", "value": f"{imp:.3f} s", "target": f"< {TARGETS['import_s']} s", "pass": imp < TARGETS["import_s"]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "router")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="normalized jsonl with a 'prompt' per line")
    ap.add_argument("--quick", action="store_true", help="few calls per configuration (a smoke run, not for figures)")
    ap.add_argument("--no-torch", action="store_true", help="skip the sentence-transformers reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model_dir = args.model_dir if args.model_dir.is_absolute() else (Path.cwd() / args.model_dir)
    calls = QUICK_CALLS if args.quick else CALLS
    rounds = 4 if args.quick else 10
    load_before = loadavg()
    t_start = time.perf_counter()

    routers = {(g, t): Router.load(model_dir, graph=g, threads=t) for g in GRAPHS for t in THREADS}
    ref = routers[("int8", 1)]
    pool = read_prompts(args.prompts)
    prompts, counts = {}, {}
    for L in LENGTHS:
        prompts[L], counts[L] = build_length_prompts(ref, pool, L, VARIANTS, args.seed)
    print(f"prompts: {VARIANTS} texts per length from {args.prompts.name}; token counts (mean) "
          + ", ".join(f"{L}: {np.mean(c):.1f}" for L, c in counts.items()), flush=True)

    res: dict = {
        "lengths": list(LENGTHS),
        "quick": bool(args.quick),
        "load_average_before": load_before,
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "processor": _cpu_model(),
            "python": platform.python_version(),
        },
        "artifact": {
            "path": str(model_dir),
            "version": ref.version,
            "default_graph": ref.meta.default_graph,
            "window_tokens": ref.meta.encoder.max_length,
            "truncation": ref.meta.encoder.truncation,
            **{k: (ref.meta.parity.to_dict() if ref.meta.parity else {}).get(k) for k in ("int8_decision_agreement", "int8_apgr_abs_diff", "int8_max_abs_diff")},
        },
        "prompt_tokens_mean": {str(L): float(np.mean(c)) for L, c in counts.items()},
    }
    try:
        import onnxruntime
        import tokenizers

        res["versions"] = {"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__}
    except Exception:  # noqa: BLE001 - version strings are decoration in the results file
        pass

    print("timing single requests ...", flush=True)
    res["latency"] = latency(routers, prompts, calls, rounds)
    print("timing the stages of one request ...", flush=True)
    res["breakdown"] = {}
    for g in GRAPHS:
        for L in LENGTHS:
            res["breakdown"][f"{g}/{L}"] = breakdown(routers[(g, 1)], prompts[L], max(20, calls[L] // 3))

    print("timing batches ...", flush=True)
    rng = random.Random(args.seed)
    batch = rng.sample(pool, BATCH)
    res["throughput"] = throughput(routers, batch, reps=3 if args.quick else 10)
    del routers, ref

    print("import time and memory in fresh processes ...", flush=True)
    res["import"] = import_time(model_dir, n=5)
    with tempfile.TemporaryDirectory() as tmp:
        mem_prompts = Path(tmp) / "prompts.json"
        mem_prompts.write_text(json.dumps(rng.sample(pool, 100)))
        res["memory"] = [run_py(MEMORY_SCRIPT, str(model_dir), g, str(mem_prompts)) for g in GRAPHS]
        bare = run_py("import json; print(json.dumps({'rss': [int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmRSS')][0]}))")
        res["bare_python_rss_mb"] = bare["rss"]
        if not args.no_torch and torch_available():
            print("sentence-transformers reference (torch, 1 thread) ...", flush=True)
            st_prompts = Path(tmp) / "st.json"
            st_prompts.write_text(json.dumps(prompts[64]))
            st = run_py(TORCH_SCRIPT, str(ROOT), str(st_prompts), str(calls[64]))
            res["sentence_transformers_t1_64"] = {
                **summary(st["times_s"]),
                "import_s": st["import_s"],
                "rss_mb": st["rss_mb"],
                "peak_rss_mb": st["peak_rss_mb"],
                "torch": st["torch"],
                "note": "embedding only (no head, no tokenizer-side truncation policy), separate process",
            }
            for g in GRAPHS:
                c = res["latency"].get(f"{g}/t1/64")
                if c:
                    res["sentence_transformers_t1_64"][f"speedup_p50_{g}"] = res["sentence_transformers_t1_64"]["p50_ms"] / c["p50_ms"]
        else:
            res["sentence_transformers_t1_64"] = None
    if res.get("sentence_transformers_t1_64") is None:
        res.pop("sentence_transformers_t1_64", None)

    res["targets"] = targets(res)
    res["load_average_after"] = loadavg()
    res["seconds"] = time.perf_counter() - t_start
    print_report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwritten {args.out} ({res['seconds']:.0f} s)")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
