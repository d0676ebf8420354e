"""int8 recipes against the fp32 graph: decision agreement, APGR, |delta p| and latency.

For a router trained on public data (default `artifacts/router`), the embedder is re-quantised
several ways and each is merged with the router's own head:

* `dynamic`: onnxruntime's plain dynamic int8 (per-channel weights, tables uint8 per tensor);
* `outlier_split`: training/quantize.py with outlier channels split off only (no per-token
  scaling, weights rounded to nearest);
* `no_gptq`: the shipped recipe with weights rounded to nearest (and fixed activation scales);
* `dynamic_activations`: the shipped recipe with onnxruntime's per-batch activation scales (the
  recipe before 1 Dec 2026: not batch-invariant);
* `shipped`: training/quantize.py's defaults (what `router-train` writes today);
* `blockwise_8bit` (reference, needs `onnx-ir`): weight-only 8-bit MatMulNBits, block 32, with
  accuracy_level 4 (activations quantised per block of 32).

Each is scored on the router's held-out test split (rebuilt from the logs named in metadata.json,
by the same prompt-hash split) against the fp32 graph at the router's threshold; `batch_max_abs_diff`
is how far a prompt's p_cheap_ok moves between a batch of one and a batch of 32 (first 128 prompts).
Latency is
`Router.predict` on 64-token prompts at one onnxruntime thread, all graphs in one process, timed in
alternating rounds so background load hits them alike.

    python benchmarks/quantization.py [--model-dir artifacts/router] [--calls 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from latency import build_length_prompts, loadavg, read_prompts, summary  # benchmarks/latency.py, beside this script

from router_model.artifact import FP32, GRAPH_FILES, INT8, PROBABILITIES_OUTPUT, ArtifactMetadata, read_metadata, write_metadata
from router_model.router import Router

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "routellm-evals" / "routellm-mmlu.normalized.jsonl"
ISSUE_AGREEMENT, ISSUE_APGR_DIFF = 0.99, 0.005


def test_split(meta: dict):
    """The router's held-out rows, as the pipeline split them (seed 0, 70/15/15 by prompt hash)."""
    from router_model.offline.log import ReadOptions, read_logs
    from router_model.offline.split import assign_splits, normalize_prompt

    d = meta["data"]
    read = read_logs(d["files"], models=(meta["cheap_model"], meta["strong_model"]),
                     options=ReadOptions(pass_threshold=d["pass_threshold"]))
    if read.data_sha256 != d["sha256"]:
        raise SystemExit("the logs named in metadata.json changed since training; retrain first")
    texts = [r.classifier_text for r in read.records]
    split = assign_splits([normalize_prompt(t) for t in texts])
    if int((split == "test").sum()) != d["split_rows"]["test"]:
        raise SystemExit("could not rebuild the router's test split (trained with a non-default seed or split?)")
    te, tr = np.flatnonzero(split == "test"), np.flatnonzero(split == "train")
    w = np.array([float(read.records[i].passed[read.cheap_model]) for i in te])
    s = np.array([float(read.records[i].passed[read.strong_model]) for i in te])
    return [read.records[i].request for i in te], w, s, [texts[i] for i in tr]


def head_of(model_dir: Path) -> onnx.ModelProto:
    """The calibrated head (head_input -> probabilities) cut out of the router's fp32 graph."""
    from training.artifact.graph import HEAD_INPUT

    src = str(model_dir / GRAPH_FILES[FP32])
    with tempfile.TemporaryDirectory() as tmp:
        onnx.utils.extract_model(src, f"{tmp}/head.onnx", [HEAD_INPUT], [PROBABILITIES_OUTPUT])
        return onnx.load(f"{tmp}/head.onnx")


def blockwise_8bit(embedder_path: Path) -> onnx.ModelProto | None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # onnx-ir missing
        return None
    q = MatMulNBitsQuantizer(onnx.load(str(embedder_path)), bits=8, block_size=32, is_symmetric=False, accuracy_level=4)
    q.process()
    return q.model.model


def plain_dynamic(embedder_path: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(str(embedder_path), f"{tmp}/int8.onnx", weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(f"{tmp}/int8.onnx")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "router")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantization.json")
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="normalized jsonl for the latency prompts")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per graph (64-token prompts, 1 thread)")
    args = ap.parse_args(argv)

    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    from router_model.offline import metrics as M
    from training.artifact.graph import merge_router_graph
    from training.artifact.quantize import QuantizationSettings, calibration_feeds, quantize_embedder
    from training.embedding.export import export_embedder

    started, load_before = time.time(), loadavg()
    meta = read_metadata(args.model_dir).to_dict()
    requests, w, s, train_texts = test_split(meta)
    emb = meta["embedder"]
    exported = export_embedder(emb["name"], truncation=emb["encoder"]["truncation"], max_length=emb["encoder"]["max_length"])
    if exported.spec.weights_sha256 != emb["weights_sha256"]:
        raise SystemExit("the cached embedder export differs from the one this router was trained with")
    head = head_of(args.model_dir)
    feeds = calibration_feeds(exported.text_encoder(), train_texts, seed=0)

    settings = QuantizationSettings()
    variants: dict[str, onnx.ModelProto] = {"dynamic": plain_dynamic(exported.onnx_path)}
    for name, recipe in (("outlier_split", QuantizationSettings(per_token_scaling=False, gptq_damping=None)),
                         ("no_gptq", QuantizationSettings(gptq_damping=None)),
                         ("dynamic_activations", QuantizationSettings(static_activations=False)),
                         ("shipped", settings)):
        variants[name] = quantize_embedder(exported.onnx_path, feeds, recipe).model
    block = blockwise_8bit(exported.onnx_path)
    if block is not None:
        variants["blockwise_8bit"] = block
    else:
        print("blockwise_8bit skipped: onnx-ir is not installed (pip install onnx-ir)")

    t = float(meta["threshold"])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        routers = {"fp32": Router.load(args.model_dir, graph=FP32, threads=1)}
        p32 = Router.load(args.model_dir, graph=FP32, threads=2).p_cheap_ok(requests)
        apgr32 = M.apgr(1 - p32, w, s)
        near = float(np.mean(np.abs(p32 - t) < 0.01))
        for name, model in variants.items():
            d = Path(tmp) / name
            shutil.copytree(args.model_dir, d)
            merged = merge_router_graph(model, head, int(meta["embedder"]["dim"]), n_features=len(meta["features"]))
            onnx.save(merged, str(d / GRAPH_FILES[INT8]))
            write_metadata(d, ArtifactMetadata.from_dict(meta))
            r8 = Router.load(d, graph=INT8, threads=2)
            p8 = r8.p_cheap_ok(requests)
            alone = np.array([r8.p_cheap_ok([q])[0] for q in requests[:128]])
            dp = np.abs(p8 - p32)
            results[name] = {
                "decision_agreement": float(np.mean((p8 >= t) == (p32 >= t))),
                "apgr": M.apgr(1 - p8, w, s),
                "apgr_abs_diff": abs(M.apgr(1 - p8, w, s) - apgr32),
                "mean_abs_p_diff": float(dp.mean()),
                "max_abs_p_diff": float(dp.max()),
                "batch_max_abs_diff": float(np.abs(alone - p8[:128]).max()),
                "graph_mb": (d / GRAPH_FILES[INT8]).stat().st_size / 1e6,
            }
            routers[name] = Router.load(d, graph=INT8, threads=1)
            print(f"{name}: agreement {results[name]['decision_agreement']:.4f}", flush=True)

        pool = read_prompts(args.prompts)
        prompts, _ = build_length_prompts(routers["fp32"], pool, 64, 16, seed=0)
        for r in routers.values():  # warm-up
            for p in prompts:
                r.predict(p)
        times: dict[str, list[float]] = {k: [] for k in routers}
        rounds = 10
        for i in range(rounds):
            for name, r in routers.items():
                for j in range(args.calls // rounds):
                    p = prompts[(i * 7 + j) % len(prompts)]
                    t0 = time.perf_counter()
                    r.predict(p)
                    times[name].append(time.perf_counter() - t0)
        latency = {k: summary(v) for k, v in times.items()}

    res = {
        "model_dir": str(args.model_dir),
        "artifact_version": meta["artifact_version"],
        "n_test": len(requests),
        "threshold": t,
        "apgr_fp32": apgr32,
        "share_within_0.01_of_threshold": near,
        "calibration_prompts": len(feeds),
        "settings": dataclasses.asdict(settings),
        "quality": results,
        "latency_64_tokens_1_thread": latency,
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")

    print(f"\n{len(requests)} held-out prompts, threshold {t:.3f} ({near:.1%} of them within 0.01 of it), fp32 APGR "
          f"{apgr32:.3f}; issue bar: agreement >= "
          f"{ISSUE_AGREEMENT:.0%}, APGR diff <= {ISSUE_APGR_DIFF}")
    print("| graph | decisions agreeing with fp32 | APGR diff | mean / max abs p diff | max move with batch | "
          "p50 / p99 ms (64 tok, 1 thread) | MB |")
    print("|---|---|---|---|---|---|---|")
    lat = latency["fp32"]
    print(f"| fp32 | - | - | - | - | {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {(args.model_dir / GRAPH_FILES[FP32]).stat().st_size / 1e6:.0f} |")
    for name, r in results.items():
        lat = latency[name]
        print(f"| {name} | {r['decision_agreement']:.1%} | {r['apgr_abs_diff']:.4f} | {r['mean_abs_p_diff']:.4f} / "
              f"{r['max_abs_p_diff']:.3f} | {r['batch_max_abs_diff']:.1e} | {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {r['graph_mb']:.0f} |")
    print(f"\nload average {load_before} -> {res['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
