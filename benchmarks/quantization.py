"""int8 recipes against the fp32 graph: decision agreement, APGR, |delta p| and latency.

For a router trained on public data (default `artifacts/router`), the embedder is re-quantised
three ways and each is merged with the router's own head:

* `dynamic`: onnxruntime dynamic int8, per-channel weights (what the pipeline shipped before);
* `outlier_split` (what the pipeline ships): the same after splitting off outlier input channels
  found on training prompts (training/quantize.py);
* `blockwise_8bit` (reference, needs `onnx-ir`): weight-only 8-bit MatMulNBits, block 32, with
  accuracy_level 4 (activations quantised per block of 32): the most faithful int8 graph found;
* `per_token_gptq` (reference): a wider outlier split (channels above 1.5x the 90th percentile,
  up to 32 per input, attention inputs included), each MatMul input divided by its per-token max
  |x| before dynamic int8 and the output multiplied back, and the int8 weights rounded with GPTQ
  (Frantar et al., 2022) on the calibration prompts instead of to nearest: the dynamic-int8 graph
  that comes closest to fp32, at about 1 ms more per 64-token decision;
* `weights_only` (diagnostic): fp32 graph whose weights are rounded to per-channel int8 and back,
  i.e. the part of the error that comes from the weights alone.

Each is scored on the router's held-out test split (rebuilt from the logs named in metadata.json,
by the same prompt-hash split) against the fp32 graph at the router's threshold. Latency is
`Router.predict` on 64-token prompts at one onnxruntime thread, all graphs in one process, timed in
alternating rounds so background load hits them alike.

    python benchmarks/quantization.py [--model-dir artifacts/router] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from latency import build_length_prompts, loadavg, read_prompts, summary  # noqa: E402
from router_model.artifact import GRAPH_FILES, PROBABILITIES_OUTPUT, read_metadata, write_metadata  # noqa: E402
from router_model.router import Router  # noqa: E402

DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "routellm-evals" / "routellm-mmlu.normalized.jsonl"
ISSUE_AGREEMENT, ISSUE_APGR_DIFF = 0.99, 0.005


def test_split(meta: dict):
    """The router's held-out rows, as the pipeline split them (seed 0, 70/15/15 by prompt hash)."""
    from training.log import ReadOptions, read_logs
    from training.split import assign_splits, normalize_prompt

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
    from training.export import HEAD_INPUT

    src = str(model_dir / GRAPH_FILES["fp32"])
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


def weights_only(embedder_path: Path) -> onnx.ModelProto:
    """fp32 graph with each MatMul weight rounded to symmetric per-column int8 and back."""
    from onnx import numpy_helper

    from training.quantize import weight_matmuls

    model = onnx.load(str(embedder_path))
    inits = {i.name: i for i in model.graph.initializer}
    for nodes in weight_matmuls(model).values():
        for node in nodes:
            w = numpy_helper.to_array(inits[node.input[1]])
            scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127.0
            wq = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(wq, node.input[1]))
    return model


def per_token_normalised(model: onnx.ModelProto) -> onnx.ModelProto:
    """Divide each weight-MatMul input by its per-token max |x| and multiply the product back.

    Dynamic int8 uses one activation scale per tensor; with the tokens brought to one range that
    scale fits every token (per-token quantisation, which onnxruntime's kernels do not offer).
    """
    from onnx import helper, numpy_helper

    from training.quantize import weight_matmuls

    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(model.graph.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    before: dict[int, list] = {}
    after: dict[int, list] = {}
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "per_token_eps"))
    for k, (x, matmuls) in enumerate(weight_matmuls(model).items()):
        st = f"per_token_{k}"
        before.setdefault(min(position[id(n)] for n in matmuls), []).extend([
            helper.make_node("Abs", [x], [f"{st}_abs"]),
            helper.make_node("ReduceMax", [f"{st}_abs"], [f"{st}_max"], axes=[-1], keepdims=1),
            helper.make_node("Max", [f"{st}_max", "per_token_eps"], [f"{st}_scale"]),
            helper.make_node("Div", [x, f"{st}_scale"], [f"{st}_x"]),
        ])
        for j, node in enumerate(matmuls):
            out = node.output[0]
            node.input[0], node.output[0] = f"{st}_x", f"{st}_{j}_y"
            after.setdefault(position[id(node)], []).append(helper.make_node("Mul", [node.output[0], f"{st}_scale"], [out]))
    ordered = []
    for i, node in enumerate(nodes):
        ordered += before.get(i, []) + [node] + after.get(i, [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def gptq_rounded(fp32_model: onnx.ModelProto, q_model: onnx.ModelProto, feeds, damp: float = 0.01) -> onnx.ModelProto:
    """Re-round the int8 weights of `q_model` (same scales) with GPTQ on the MatMul inputs of the feeds."""
    from onnx import TensorProto, helper, numpy_helper

    from router_model.onnx_session import make_session
    from training.quantize import weight_matmuls

    groups = weight_matmuls(fp32_model)
    weights = {i.name: i for i in fp32_model.graph.initializer}
    qinit = {i.name: i for i in q_model.graph.initializer}
    groups = {x: [n for n in ns if n.input[1] + "_quantized" in qinit] for x, ns in groups.items()}
    groups = {x: ns for x, ns in groups.items() if ns}
    probe = onnx.ModelProto.FromString(fp32_model.SerializeToString())
    for x in groups:
        probe.graph.output.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    session = make_session(probe.SerializeToString(), threads=2)
    hess: dict[str, np.ndarray] = {}
    tokens = 0
    for feed in feeds:
        mask = feed["attention_mask"].astype(bool)
        for x, out in zip(groups, session.run(list(groups), feed)):
            v = out[mask].astype(np.float64)
            hess[x] = hess.get(x, 0) + v.T @ v
        tokens += int(mask.sum())
    for x, nodes in groups.items():
        h = hess[x] / tokens
        for node in nodes:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
            scale = numpy_helper.to_array(qinit[node.input[1] + "_scale"]).astype(np.float64)
            name = node.input[1] + "_quantized"
            qinit[name].CopyFrom(numpy_helper.from_array(_gptq(w, scale, h, damp), name))
    return q_model


def _gptq(w: np.ndarray, scale: np.ndarray, h: np.ndarray, damp: float) -> np.ndarray:
    """Symmetric int8 rows of w (K x N, per-column scales), rounding errors pushed onto later rows."""
    w, h = w.copy(), h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    order = np.argsort(-np.diag(h))  # most active input channels first
    w, h = w[order], h[order][:, order]
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros(w.shape, dtype=np.int8)
    for i in range(len(w)):
        qi = np.clip(np.round(w[i] / scale), -127, 127)
        q[i] = qi
        w[i + 1:] -= np.outer(u[i, i + 1:], (w[i] - qi * scale) / u[i, i])
    out = np.empty_like(q)
    out[order] = q
    return out


def per_token_gptq(embedder_path: Path, feeds) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from training.quantize import QuantizationSettings, activation_maxima, find_outliers, split_outlier_channels, weight_matmuls

    wide = QuantizationSettings(outlier_ratio=1.5, max_outliers=32)
    model = onnx.load(str(embedder_path))
    amax = activation_maxima(model, feeds, list(weight_matmuls(model)))
    outliers = {x: idx for x, m in amax.items() if (idx := find_outliers(m, wide)).size}
    split, keep_fp32 = split_outlier_channels(model, outliers)
    normalised = per_token_normalised(split)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(normalised, f"{tmp}/in.onnx")
        quantize_dynamic(f"{tmp}/in.onnx", f"{tmp}/out.onnx", weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=keep_fp32)
        quantized = onnx.load(f"{tmp}/out.onnx")
    return gptq_rounded(normalised, quantized, feeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "router")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantization.json")
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="normalized jsonl for the latency prompts")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per graph (64-token prompts, 1 thread)")
    args = ap.parse_args(argv)

    import logging

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    from training import metrics as M
    from training.embedder import export_embedder
    from training.export import merge_router_graph
    from training.quantize import QuantizationSettings, calibration_feeds, quantize_embedder

    started, load_before = time.time(), loadavg()
    meta = read_metadata(args.model_dir).raw
    requests, w, s, train_texts = test_split(meta)
    emb = meta["embedder"]
    exported = export_embedder(emb["name"], truncation=emb["encoder"]["truncation"], max_length=emb["encoder"]["max_length"])
    if exported.spec.weights_sha256 != emb["weights_sha256"]:
        raise SystemExit("the cached embedder export differs from the one this router was trained with")
    head = head_of(args.model_dir)
    feeds = calibration_feeds(exported.text_encoder(), train_texts, seed=0)

    settings = QuantizationSettings()
    variants: dict[str, onnx.ModelProto] = {
        "dynamic": quantize_embedder(exported.onnx_path, [], QuantizationSettings(max_outliers=0)).model,
        "outlier_split": quantize_embedder(exported.onnx_path, feeds, settings).model,
    }
    block = blockwise_8bit(exported.onnx_path)
    if block is not None:
        variants["blockwise_8bit"] = block
    else:
        print("blockwise_8bit skipped: onnx-ir is not installed (pip install onnx-ir)")
    variants["per_token_gptq"] = per_token_gptq(exported.onnx_path, feeds)
    variants["weights_only"] = weights_only(exported.onnx_path)

    t = float(meta["threshold"])
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        routers = {"fp32": Router.load(args.model_dir, graph="fp32", threads=1)}
        p32 = Router.load(args.model_dir, graph="fp32", threads=2).p_cheap_ok(requests)
        apgr32 = M.apgr(1 - p32, w, s)
        near = float(np.mean(np.abs(p32 - t) < 0.01))
        for name, model in variants.items():
            d = Path(tmp) / name
            shutil.copytree(args.model_dir, d)
            merged = merge_router_graph(model, head, int(meta["embedder"]["dim"]), len(meta["features"]))
            onnx.save(merged, str(d / GRAPH_FILES["int8"]))
            write_metadata(d, {k: v for k, v in meta.items() if k not in ("files", "format_version")})
            p8 = Router.load(d, graph="int8", threads=2).p_cheap_ok(requests)
            dp = np.abs(p8 - p32)
            results[name] = {
                "decision_agreement": float(np.mean((p8 >= t) == (p32 >= t))),
                "apgr": M.apgr(1 - p8, w, s),
                "apgr_abs_diff": abs(M.apgr(1 - p8, w, s) - apgr32),
                "mean_abs_p_diff": float(dp.mean()),
                "max_abs_p_diff": float(dp.max()),
                "graph_mb": (d / GRAPH_FILES["int8"]).stat().st_size / 1e6,
            }
            routers[name] = Router.load(d, graph="int8", threads=1)
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
        "settings": {"outlier_ratio": settings.outlier_ratio, "max_outliers": settings.max_outliers},
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
    print("| graph | decisions agreeing with fp32 | APGR diff | mean / max abs p diff | p50 / p99 ms (64 tok, 1 thread) | MB |")
    print("|---|---|---|---|---|---|")
    lat = latency["fp32"]
    print(f"| fp32 | - | - | - | {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {(args.model_dir / GRAPH_FILES['fp32']).stat().st_size / 1e6:.0f} |")
    for name, r in results.items():
        lat = latency[name]
        print(f"| {name} | {r['decision_agreement']:.1%} | {r['apgr_abs_diff']:.4f} | {r['mean_abs_p_diff']:.4f} / "
              f"{r['max_abs_p_diff']:.3f} | {lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | {r['graph_mb']:.0f} |")
    print(f"\nload average {load_before} -> {res['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
