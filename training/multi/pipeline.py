"""`router-train --models a,b,c | all`: the N-model stages in order, and nothing else.

labelled log (masked N-model outcomes, per-row dollars) -> shared embedding and features ->
one calibrated pass head and ok head per model -> per-model cost models -> the rule and its
parameter for the goal, on validation -> held-out frontier (RouterBench) and ECE per model ->
artifact (all heads in one graph) -> plots and tracking -> publish, last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import ArtifactMetadata
from router_model.cost import PriceTable
from router_model.multi import RULE_FAMILIES, choose
from router_model.offline.log import ReadOptions
from router_model.offline.multi_data import MultiDataset, MultiLog, build_multi_dataset, parse_models, read_multi
from router_model.offline.multi_evaluation import eval_rows, evaluate_multi, finite, format_report
from router_model.prompt_digest import PromptDigest
from training.artifact.writer import discard, publish
from training.cache import default_cache_dir
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import OnnxEmbedder
from training.multi.artifact import MultiHeldOut, MultiRecord, stage_multi_dir
from training.multi.heads import PassHeads, ece_per_model, fit_heads
from training.multi.plots import save_plots
from training.multi.rule import (
    MultiGoal,
    OrderRows,
    RuleChoice,
    choose_rule,
    expected_costs,
    fit_cost_models,
    reference_model,
    sweep,
)

TEST_LOG = "test.jsonl"


@dataclass(frozen=True)
class MultiTrainResult:
    model_dir: Path
    metadata: ArtifactMetadata
    evaluation: dict[str, Any]
    run_id: str | None
    plots: list[Path]
    heads: PassHeads
    choice: RuleChoice


def _say(msg: str) -> None:
    print(msg, flush=True)


def multi_goal(goal) -> MultiGoal:
    """The N-model reading of a router-train goal (a strong-call share has none)."""
    if goal.kind == "max_strong_share":
        raise ValueError("--max-strong-share has no meaning among N models; use --quality-floor or --max-cost-per-request")
    return MultiGoal(goal.kind, float(goal.value), goal.risk, goal.certificate)


@dataclass(frozen=True)
class Scored:
    """One split's model outputs and outcomes."""

    rows: np.ndarray
    p_pass: np.ndarray
    p_ok: np.ndarray
    est: np.ndarray
    passed: np.ndarray
    cost: np.ndarray


def score_rows(heads: PassHeads, X: np.ndarray, ds: MultiDataset, *, cost_models, rows: np.ndarray) -> Scored:
    return Scored(rows, heads.p_pass(X[rows]), heads.p_ok(X[rows]), expected_costs(cost_models, ds.n_tokens[rows]),
                  ds.passed[rows], ds.cost[rows])


def held_out_report(sc: Scored, models, choice: RuleChoice) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test frontier of each rule family, the chosen point run on test, and ECE per model."""
    keep = eval_rows(sc.passed)
    P, K, E, Y, C = sc.p_pass[keep], sc.p_ok[keep], sc.est[keep], sc.passed[keep], sc.cost[keep]
    sweeps = {kind: sweep(kind, P, K, est_cost=E, passed=Y, cost=C) for kind in RULE_FAMILIES}
    pick = choose(choice.kind, choice.value, P, K, E)
    rows = np.arange(len(Y))
    chosen = {"kind": choice.kind, "value": float(choice.value), "cost": float(C[rows, pick].sum()),
              "quality": float(Y[rows, pick].mean()) if len(Y) else 0.0,
              "share_by_model": {m: float(np.mean(pick == j)) for j, m in enumerate(models)}}
    rep = evaluate_multi(models, sc.passed, sc.cost, router_sweeps=sweeps, chosen=chosen)
    rep["ece_per_model"] = ece_per_model(sc.p_pass, sc.passed, models)
    return rep, sweeps


def write_test_log(log: MultiLog, ds: MultiDataset, rows: np.ndarray, *, path: Path) -> Path:
    """The held-out rows as a team-format log with their outcomes and dollars (`router-cost savings`)."""
    recs = log.records
    col = {m: j for j, m in enumerate(ds.models)}
    with open(path, "w", encoding="utf-8") as fh:
        for i in rows:
            r = recs[int(i)]
            row: dict[str, Any] = {k: v for k, v in r.to_row(()).items() if k != "outcomes"}
            row["outcomes"] = {m: {"score": r.scores[m]} for m in ds.models if m in r.scores}
            row["cost_usd"] = {m: float(ds.cost[int(i), col[m]]) for m in ds.models}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def train_multi(config) -> MultiTrainResult:
    """Run the N-model stages for a `TrainConfig` whose `models` is set (see the module docstring)."""
    from training.artifact.writer import check_replaceable
    from training.pipeline import next_steps, report_dir

    t0 = time.perf_counter()
    cache_dir = config.cache_dir or default_cache_dir()
    check_replaceable(config.out_dir)
    goal = multi_goal(config.goal)
    wanted = parse_models(config.models)
    log = read_multi(config.logs, wanted, options=ReadOptions(pass_threshold=config.pass_threshold,
                                                              skip_invalid=config.skip_invalid))
    read = log.read
    _say(f"log: {read.rows_read} rows read, {len(log.records)} used ({log.skipped_no_outcome} with none of the models, "
         f"{sum(read.skipped.values())} invalid)")
    exported = export_embedder(config.embedder, cache_dir, truncation=config.truncation)
    embedder = OnnxEmbedder(exported, cache_dir=cache_dir)
    prices = PriceTable.load(config.prices, price_as=dict(config.price_as))
    ds = build_multi_dataset(log, embedder.encoder, prices, fractions=config.split, seed=config.seed,
                             output_tokens=config.output_tokens)
    counts = ds.split_counts()
    _say(f"models ({len(ds.models)}, cheapest first by mean $/call): " + ", ".join(
        f"{m} [{int(ds.mask[:, j].sum())} outcomes, ${ds.cost[:, j].mean():.6f}, {ds.cost_source[m]}]"
        for j, m in enumerate(ds.models)))
    _say(f"split by prompt text: {counts}")
    for k, n in counts.items():
        if n == 0:
            raise ValueError(f"the {k} split is empty: the log is too small ({len(log.records)} usable rows)")
    emb = embedder.embed(ds.texts, progress=config.progress)
    st = dict(embedder.last_stats)
    _say(f"embedding: {int(st['embedded'])} new, {int(st['from_cache'])} cached")
    embedder.close()
    X = feature_matrix(emb, ds.texts, ds.n_tokens, features=config.features)
    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")

    _say("fitting a calibrated pass head and ok head per model (masked outcomes):")
    heads = fit_heads(X, ds.passed, ds.models, train_rows=tr, val_rows=va, seed=config.seed, say=_say)
    cost_models = fit_cost_models(ds.n_tokens[tr], ds.cost[tr], ds.models)
    val = score_rows(heads, X, ds, cost_models=cost_models, rows=va)
    ref = reference_model(ds.passed[tr], ds.cost[tr])
    # the single certified sequence is ordered on the training rows' head outputs and expected dollars
    # (no validation outcome), then tested on the validation rows at the full risk
    order = OrderRows(heads.p_pass(X[tr]), heads.p_ok(X[tr]), expected_costs(cost_models, ds.n_tokens[tr]))
    choice = choose_rule(val.p_pass, val.p_ok, val.est, passed=val.passed, cost=val.cost, models=ds.models, goal=goal,
                           reference=ref, lambda_scale=max(cm.mean for cm in cost_models) or None, order_rows=order)
    _say(f"goal: {goal.kind}={goal.value:g} at " + ("no risk control" if goal.risk is None else f"risk {goal.risk:g}")
         + f", relative to {ds.models[ref]} (the best single model on the training rows)")
    _say(f"policy: {choice.kind} = {choice.value:.6g}  ({choice.why}); validation AIQ by rule: " + ", ".join(
        f"{k} {v['val_aiq']:.4f}" for k, v in choice.families.items()))

    test = score_rows(heads, X, ds, cost_models=cost_models, rows=te)
    evaluation, sweeps = held_out_report(test, ds.models, choice)
    evaluation = finite(evaluation)
    _say(format_report(evaluation))
    _say("ECE per model (test, 15 bins): " + ", ".join(f"{m.split('/')[-1]} {v['ece']:.3f}"
                                                      for m, v in evaluation["ece_per_model"].items()))

    rec = MultiRecord(read=read, heads=heads, choice=choice, cost_models=cost_models, cost_source=ds.cost_source,
                      evaluation=evaluation, split_rows=counts, logs=tuple(config.logs), features=tuple(config.features),
                      pass_threshold=config.pass_threshold, prices=prices.provenance(ds.models),
                      trained_prompts=PromptDigest.build(ds.texts[i] for i in np.concatenate([tr, va])))
    held = MultiHeldOut([log.records[i].request for i in te], X[te], ds.passed[te], ds.n_tokens[te])
    staged = stage_multi_dir(config.out_dir, rec, exported, X_val=X[va], train_texts=[ds.texts[i] for i in tr],
                             held=held, seed=config.seed, default_graph=config.default_graph)
    try:
        meta = staged.metadata
        par = meta.parity
        assert par is not None
        _say(f"export parity: fp32 graph vs heads {par.fp32_graph_vs_sklearn_max_abs:.1e}; int8 vs fp32: "
             f"{par.int8_decision_agreement:.1%} decisions agree, quality differs by {par.int8_apgr_abs_diff:.4f}")
        plot_dir = report_dir(config.out_dir)
        plots = save_plots(plot_dir, evaluation, sweeps, p_pass=test.p_pass, passed=test.passed, models=ds.models)
        (plot_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        write_test_log(log, ds, te, path=plot_dir / TEST_LOG)
        run_id = None
        if config.track:
            from training.tracking import TrackingTarget, track_multi_run

            params = {**config.params(), "policy": choice.kind, "policy_value": choice.value,
                      "models_resolved": ",".join(ds.models), "data_sha256": read.data_sha256}
            metrics = {"train_seconds": time.perf_counter() - t0, "val_quality": choice.val_quality,
                       "val_cost_per_request": choice.val_cost_per_request}
            run_id = track_multi_run(TrackingTarget(config.tracking_uri, config.experiment, config.registered_model),
                                     params, metrics, evaluation=evaluation, model_dir=staged.path, meta=meta, plots=plots)
    except BaseException:
        discard(staged)
        raise
    publish(staged)
    _say(f"model directory: {config.out_dir}  (N-model, default graph {meta.default_graph}, "
         f"{time.perf_counter() - t0:.0f}s in all)")
    _say(f"report (plots, evaluation.json, the held-out rows as {TEST_LOG}): {plot_dir}")
    _say(next_steps(config.out_dir, config.price_as))
    return MultiTrainResult(config.out_dir, meta, evaluation, run_id, plots, heads, choice)

