"""Write and verify the model directory the inference package loads.

The directory is built beside the target and moved into place only after the router package
has loaded it back and matched the sklearn pipeline, so a failed export never replaces a good
model (a service watching the directory keeps its last good one).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from router_model.artifact import GRAPH_FILES, TOKENIZER_FILE, write_metadata
from training import metrics as M
from training.head import p_cheap_ok
from training.export import head_parity, head_to_onnx, merge_router_graph
from training.quantize import calibration_feeds, quantize_embedder

# int8 is served by default when, on the held-out split, at least 99% of its decisions agree with
# fp32 and its APGR is within 0.005. The int8 graph (training/quantize.py) agrees on ~99.3% of the
# public router's held-out decisions; the flips are prompts within ~0.005 of the threshold.
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_APGR_DIFF = 0.005
FP32_MAX_DIFF = 1e-4


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("router-model", "onnx", "onnxruntime", "tokenizers", "numpy", "scikit-learn", "skl2onnx",
                "sentence-transformers", "transformers", "torch"):
        try:
            out[pkg.replace("-", "_")] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_model_dir(*, config, read, exported, model, target, threshold, evaluation, head_name, head_scores, ds) -> dict[str, Any]:
    from router_model.router import Router

    out_dir = Path(config.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{stamp:%Y%m%d%H%M%S%f}"
    tmp.mkdir()
    try:
        n_inputs = ds.X.shape[1]
        head = head_to_onnx(model, n_inputs)
        va = ds.rows("val")
        head_diff = head_parity(model, head, ds.X[va])
        if head_diff > FP32_MAX_DIFF:
            raise RuntimeError(f"the ONNX head differs from sklearn by {head_diff:.2e} (> {FP32_MAX_DIFF})")
        classes = [target.classes[int(c)] for c in model.classes_]
        cheap_ok = [c for c in classes if c in target.cheap_ok_classes]
        dim = exported.spec.dim
        emb32 = onnx.load(str(exported.onnx_path))
        onnx.save(merge_router_graph(emb32, head, dim, len(config.features)), str(tmp / GRAPH_FILES["fp32"]))
        # Outlier channels are found on training prompts only: the test split stays unseen.
        train_texts = [ds.texts[i] for i in ds.rows("train")]
        feeds = calibration_feeds(exported.text_encoder(), train_texts, seed=config.seed)
        emb8 = quantize_embedder(exported.onnx_path, feeds)
        onnx.save(merge_router_graph(emb8.model, head, dim, len(config.features)), str(tmp / GRAPH_FILES["int8"]))
        shutil.copyfile(exported.tokenizer_path, tmp / TOKENIZER_FILE)
        version = f"{stamp:%Y%m%dT%H%M%SZ}-{hashlib.sha256(head.SerializeToString()).hexdigest()[:8]}"
        metadata: dict[str, Any] = {
            "artifact_version": version,
            "created_at": stamp.isoformat(),
            "cheap_model": read.cheap_model,
            "strong_model": read.strong_model,
            "threshold": float(threshold.threshold),
            "goal": {"kind": config.goal.kind, "value": config.goal.value, "met_on_validation": bool(threshold.met)},
            "target": target.name,
            "classes": classes,
            "cheap_ok_classes": cheap_ok,
            "head": head_name,
            "calibration": config.calibration,
            "embedder": exported.spec.to_dict(),
            "features": list(config.features),
            "graphs": dict(GRAPH_FILES),
            "quantization": emb8.summary(),
            "default_graph": "fp32",
            "metrics": {"test": evaluation, "validation_heads": head_scores},
            "data": {
                "files": [str(p) for p in config.logs],
                "sha256": read.data_sha256,
                "rows_read": read.rows_read,
                "rows_used": read.rows_used,
                "skipped": dict(read.skipped),
                "split_rows": {k: int((ds.split == k).sum()) for k in ("train", "val", "test")},
                "pass_threshold": config.pass_threshold,
            },
            "versions": _versions(),
        }
        write_metadata(tmp, metadata)

        # Load the directory back through the inference package and hold it to the sklearn pipeline.
        te = ds.rows("test")
        requests = [read.records[i].request for i in te]
        p_sklearn = p_cheap_ok(model, ds.X[te], target)
        p32 = Router.load(tmp, graph="fp32").p_cheap_ok(requests)
        fp32_diff = float(np.abs(p32 - p_sklearn).max())
        if fp32_diff > FP32_MAX_DIFF:
            raise RuntimeError(f"the exported fp32 graph differs from the sklearn pipeline by {fp32_diff:.2e}")
        p8 = Router.load(tmp, graph="int8").p_cheap_ok(requests)
        t = threshold.threshold
        agreement = float(np.mean((p8 >= t) == (p32 >= t)))
        w, s = ds.w[te], ds.s[te]
        apgr_diff = abs(M.apgr(1 - p8, w, s) - M.apgr(1 - p32, w, s))
        int8_ok = agreement >= INT8_MIN_AGREEMENT and apgr_diff <= INT8_MAX_APGR_DIFF
        default = config.default_graph if config.default_graph != "auto" else ("int8" if int8_ok else "fp32")
        metadata["default_graph"] = default
        metadata["parity"] = {
            "head_onnx_vs_sklearn_max_abs": head_diff,
            "fp32_graph_vs_sklearn_max_abs": fp32_diff,
            "int8_decision_agreement": agreement,
            "int8_apgr_abs_diff": apgr_diff,
            "int8_max_abs_diff": float(np.abs(p8 - p32).max()),
            "n": int(len(te)),
        }
        full = write_metadata(tmp, metadata)
        old = out_dir.parent / f".{out_dir.name}.old-{stamp:%Y%m%d%H%M%S%f}"
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return full
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
