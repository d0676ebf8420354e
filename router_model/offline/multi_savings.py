"""`router-cost savings` for an N-model router: the routed dollars and quality on a labelled log.

Every row is routed by the artifact's own rule (`Router.predict_batch`, rules included) and
costed on the model it chose: the row's `cost_usd` when the log has it, else the price table and
the row's token counts (or the documented estimates), as training costs rows
(`router_model/offline/multi_data.py`). Beside it: every single model, and the oracle, on the rows that have
every model's outcome. Use held-out rows (router-train writes them to DIR-report/test.jsonl).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.offline.log import ReadOptions
from router_model.offline.multi_data import build_multi_dataset, read_multi
from router_model.offline.multi_evaluation import eval_rows, oracle_point, single_points
from router_model.router import Router


def multi_report(model_dir: str | Path, logs: list[Path], *, requests_per_month: float, prices: str | Path | None = None,
                 price_as: dict[str, str] | None = None, output_tokens: int | None = None,
                 skip_invalid: bool = False) -> dict[str, Any]:
    router = Router.load(model_dir)
    if router.multi is None:
        raise ValueError(f"{model_dir} is a cheap/strong router, not an N-model one")
    data = router.meta.data
    log = read_multi(logs, router.models, options=ReadOptions(pass_threshold=data.pass_threshold if data else 0.8,
                                                               skip_invalid=skip_invalid))
    table = PriceTable.load(prices, price_as=price_as or {})
    ds = build_multi_dataset(log, router.encoder, table, output_tokens=output_tokens or DEFAULT_OUTPUT_TOKENS)
    order = [ds.models.index(m) for m in router.models]  # the router's column order
    passed, cost = ds.passed[:, order], ds.cost[:, order]
    # build_multi_dataset reorders columns but keeps rows: records align with rows
    decisions = router.predict_batch([r.request for r in log.records], tags=[list(r.tags) for r in log.records])
    col = {m: j for j, m in enumerate(router.models)}
    pick = np.array([col[d.model] for d in decisions])
    keep = eval_rows(passed)
    rows = np.flatnonzero(keep)
    n = len(rows)
    if n == 0:
        raise ValueError("no row of the log has an outcome for every model of the router")
    routed_cost = float(cost[rows, pick[rows]].sum())
    routed_q = float(passed[rows, pick[rows]].mean())
    singles = single_points(passed[rows], cost[rows], router.models)
    best = next(s for s in singles if s["name"] == router.multi.best_single)
    per_req = routed_cost / n
    return {
        "model_dir": str(model_dir),
        "artifact_version": router.version,
        "policy": {"kind": router.multi.rule, "value": router.multi.value},
        "rows": n,
        "rows_without_every_outcome": int((~keep).sum()),
        "requests_per_month": requests_per_month,
        "routed": {"quality": routed_q, "cost_per_request": per_req, "monthly": per_req * requests_per_month,
                   "quality_vs_best": routed_q / best["quality"] if best["quality"] else float("nan"),
                   "cost_vs_best": routed_cost / best["cost"] if best["cost"] else float("nan"),
                   "saved_vs_best_monthly": (best["cost"] - routed_cost) / n * requests_per_month},
        "share_by_model": {m: float(np.mean(pick[rows] == j)) for j, m in enumerate(router.models)},
        "reasons": dict(Counter(d.reason for d in decisions)),
        "best_single": best,
        "singles": [{**s, "cost_per_request": s["cost"] / n, "monthly": s["cost"] / n * requests_per_month}
                    for s in singles],
        "oracle": oracle_point(passed[rows], cost[rows]),
        "cost_source": ds.cost_source,
    }


def format_multi_report(rep: dict[str, Any]) -> str:
    r, b = rep["routed"], rep["best_single"]
    lines = [
        f"N-model router {rep['artifact_version']} ({rep['policy']['kind']}={rep['policy']['value']:.4g}) on {rep['rows']} rows "
        f"({rep['rows_without_every_outcome']} without every outcome left out)",
        f"  routed: quality {r['quality']:.3f} ({r['quality_vs_best']:.1%} of {b['name']}) at ${r['cost_per_request']:.6f}"
        f"/request = {r['cost_vs_best']:.1%} of its cost; ${r['monthly']:,.0f}/month at {rep['requests_per_month']:,.0f} "
        f"requests, ${r['saved_vs_best_monthly']:,.0f} saved",
        f"  {'model':<40} {'share':>6} {'quality':>8} {'$/request':>11} {'$/month':>12}",
    ]
    for s in rep["singles"]:
        lines.append(f"  {s['name']:<40} {rep['share_by_model'][s['name']]:6.1%} {s['quality']:8.3f} "
                     f"{s['cost_per_request']:11.6f} {s['monthly']:12,.0f}")
    o = rep["oracle"]
    lines.append(f"  oracle: quality {o['quality']:.3f} at ${o['cost'] / rep['rows']:.6f}/request")
    return "\n".join(lines)
