"""The N-model training report's plots (PNG): the cost-quality frontier and per-model reliability.

The figures come from `router_model.offline.multi_evaluation` (`evaluate_multi`'s report and its
hull) and `router_model.offline.metrics` (reliability bins, ECE).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.offline import metrics as M
from router_model.offline.multi_evaluation import hull


def save_plots(out_dir: Path, rep: dict[str, Any], router_sweeps: dict[str, Any], *, p_pass: np.ndarray,
               passed: np.ndarray, models: Sequence[str]) -> list[Path]:
    """The cost-quality frontier and the per-model reliability diagrams, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    b = rep["best_single"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for s in rep["singles"]:
        ax.scatter(s["cost"] / b["cost"] * 100, s["quality"], color="black", s=14)
        ax.annotate(s["name"].split("/")[-1], (s["cost"] / b["cost"] * 100, s["quality"]), fontsize=6)
    sc = [s["cost"] for s in rep["singles"]]
    sq = [s["quality"] for s in rep["singles"]]
    hc, hq = hull(sc, sq)
    ax.plot(hc / b["cost"] * 100, hq, color="grey", linestyle="--", label="best mix of two models")
    for label, sw in router_sweeps.items():
        ax.scatter(np.asarray(sw.cost) / b["cost"] * 100, sw.quality, s=4, alpha=0.5)
        rc, rq = hull(sw.cost, sw.quality)
        ax.plot(rc / b["cost"] * 100, rq, label=f"router {label} (AIQ {rep['routers'][label]['aiq']:.3f})")
    o, r = rep["oracle"], rep["random"]
    ax.scatter([o["cost"] / b["cost"] * 100], [o["quality"]], marker="*", s=80, label="oracle")
    ax.scatter([r["cost"] / b["cost"] * 100], [r["quality"]], marker="x", s=40, label="random")
    if "chosen" in rep:
        c = rep["chosen"]
        ax.scatter([c["cost_vs_best"] * 100], [c["quality"]], marker="D", s=40, label="chosen on validation")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"cost, % of the best single model ({b['name']})")
    ax.set_ylabel("quality (pass rate)")
    ax.set_title(f"Cost-quality frontier (test, n={rep['n']})")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    p = out_dir / "cost_quality_frontier.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    k = len(models)
    cols = min(4, k)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for j, m in enumerate(models):
        ax = axes[j // cols][j % cols]
        keep = ~np.isnan(passed[:, j])
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        if keep.any():
            bins = M.reliability_bins(p_pass[keep, j], passed[keep, j], n_bins=15)
            mask = np.asarray(bins.counts) > 0
            ax.plot(np.asarray(bins.mean_predicted)[mask], np.asarray(bins.observed)[mask], marker="o", markersize=3)
            ax.set_title(f"{m.split('/')[-1][:28]}\nECE {M.ece(p_pass[keep, j], passed[keep, j]):.3f}", fontsize=7)
        ax.tick_params(labelsize=6)
    for j in range(k, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Reliability of P(pass) per model (test)", fontsize=9)
    fig.tight_layout()
    p = out_dir / "reliability_per_model.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
