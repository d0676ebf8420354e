"""PNG plots saved with every run: the cost-quality curve and the reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.offline import metrics as M
from training.evaluate.baselines import heuristic_scores, oracle_scores
from training.head import cheap_loses_nothing


def save_plots(
    out_dir: Path,
    texts: Sequence[str],
    p_test: np.ndarray,
    *,
    cheap_passed: np.ndarray,
    strong_passed: np.ndarray,
    evaluation: dict[str, Any],
) -> list[Path]:
    """The cost-quality curve (router beside the baselines) and the reliability diagram, on held-out rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    curves = {
        "router": 1.0 - p_test,
        "heuristic (length/keywords)": heuristic_scores(texts),
        "oracle": oracle_scores(cheap_passed, strong_passed),
        "random": np.zeros(len(p_test)),
    }
    for name, r in curves.items():
        x, q = M.quality_curve(r, cheap_passed, strong_passed)
        ax.plot(x * 100, q, label=name, linestyle="--" if name == "random" else "-")
    share = evaluation["router"]["strong_share"]
    ax.axvline(share * 100, color="grey", linewidth=0.8)
    ax.annotate(f"chosen threshold\n{share:.0%} strong", (share * 100, float(cheap_passed.mean())), fontsize=8)
    ax.set_xlabel("share of calls sent to the strong model (%)")
    ax.set_ylabel("quality (pass rate)")
    ax.set_title(f"Quality vs strong-call share (test, n={len(p_test)})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = out_dir / "quality_vs_strong_share.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    ok = cheap_loses_nothing(cheap_passed, strong_passed)
    bins = M.reliability_bins(p_test, ok, n_bins=15)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    mask = np.asarray(bins.counts) > 0
    ax.plot(np.asarray(bins.mean_predicted)[mask], np.asarray(bins.observed)[mask], marker="o", label="router")
    ax.set_xlabel("predicted p_cheap_ok")
    ax.set_ylabel("observed: cheap model lost nothing")
    r = evaluation["router"]
    ax.set_title(f"Reliability (ECE {r['ece']:.3f}, Brier {r['brier']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    p = out_dir / "reliability.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
