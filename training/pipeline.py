"""The order of the training stages, and nothing else: each stage lives in its own module.

labelled log (data/) -> embedding and features (embedding/) -> head (head.py) -> threshold
(threshold.py) -> evaluation (evaluate/) -> artifact (artifact/) -> tracking (tracking.py) ->
publish. The model directory is published last, after everything that can fail.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import GRAPH_FILES, ArtifactMetadata
from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.features import DEFAULT_FEATURES, check_feature_names
from router_model.offline.log import ReadOptions, read_logs
from router_model.offline.row import write_log
from router_model.offline.split import normalize_prompt, sample_groups
from router_model.prompt_digest import PromptDigest
from router_model.summary import LEGEND, format_evaluation
from training.artifact.pair import HeldOut, TrainingRecord, stage_model_dir
from training.artifact.reference import build_reference
from training.artifact.writer import StagedArtifact, check_replaceable, discard, publish
from training.cache import default_cache_dir
from training.data.dataset import build_dataset
from training.embedding.common import DEFAULT_EMBEDDER
from training.embedding.export import export_embedder
from training.embedding.features import feature_matrix
from training.embedding.onnx_embedder import OnnxEmbedder
from training.escalation import ESCALATION_MODES, describe_escalation, on_every_row, with_escalation
from training.evaluate.evaluation import evaluate
from training.head import DEFAULT_SELECT_BY, FittedHead, make_target, select_head
from training.heartbeat import Heartbeat
from training.threshold import DEFAULT_GOAL, THRESHOLD_ROWS, Goal, describe_choice, threshold_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded as the run's parameters."""

    logs: tuple[Path, ...]
    out_dir: Path
    cheap_model: str | None = None
    strong_model: str | None = None
    models: str | None = None  # --models a,b,c | all: an N-model router (training/multi), not a pair
    embedder: str = DEFAULT_EMBEDDER
    target: str = "joint"
    features: tuple[str, ...] = DEFAULT_FEATURES
    heads: tuple[str, ...] = ()
    calibration: str = "sigmoid"
    goal: Goal = DEFAULT_GOAL
    threshold_rows: str = "all"  # the threshold's rows: every labelled row ("all"), train+validation ("oof"), "validation"
    escalation: str = "auto"  # auto: try the answer score when the log kept cheap answers (training/escalation.py)
    select_by: str = DEFAULT_SELECT_BY  # how the head is chosen on validation: log_loss or apgr
    pass_threshold: float = 0.8
    skip_invalid: bool = False
    sample_rows: int | None = None  # train on a spread sample of about this many rows (a demo, a quick look)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    truncation: str = "head_tail"
    default_graph: str = "auto"
    prices: Path | None = None
    price_as: tuple[tuple[str, str], ...] = ()  # (name in the log, priced model) for models without a price
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    cache_dir: Path | None = None
    tracking_uri: str | None = None
    experiment: str = "router-model"
    registered_model: str = "router-model"
    track: bool = True
    progress: bool = True
    ray: str | None = None  # Ray address ('auto', 'ray://host:10001', 'local'): embed on Ray Data

    def __post_init__(self) -> None:
        if not self.logs:
            raise ValueError("at least one log file is needed")
        check_feature_names(self.features)
        make_target(self.target)
        if (self.cheap_model is None) != (self.strong_model is None):
            raise ValueError("name both --cheap and --strong, or neither (the log's most represented pair is used)")
        if self.models is not None and self.cheap_model is not None:
            raise ValueError("name either --models (N models) or --cheap/--strong (a pair), not both")
        if self.cheap_model is not None and self.cheap_model == self.strong_model:
            raise ValueError("the cheap and the strong model must differ")
        if self.default_graph not in ("auto", *GRAPH_FILES):
            raise ValueError(f"default_graph must be auto or one of {sorted(GRAPH_FILES)}")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split fractions must be positive and sum to 1, got {self.split}")
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError("calibration must be sigmoid or isotonic")
        if self.escalation not in ESCALATION_MODES:
            raise ValueError(f"escalation must be one of {ESCALATION_MODES}, got {self.escalation!r}")
        if self.threshold_rows not in THRESHOLD_ROWS:
            raise ValueError(f"threshold_rows must be one of {', '.join(THRESHOLD_ROWS)}, got {self.threshold_rows!r}")
        if self.sample_rows is not None and self.sample_rows < 1:
            raise ValueError(f"sample_rows must be >= 1, got {self.sample_rows}")
        if self.select_by not in ("log_loss", "apgr"):
            raise ValueError(f"select_by must be log_loss or apgr, got {self.select_by!r}")

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d["goal"] = f"{self.goal.kind}={self.goal.value}"
        d["risk"] = "none" if self.goal.risk is None else self.goal.risk
        d["certificate"] = "none" if self.goal.risk is None else self.goal.certificate
        d["logs"] = ",".join(str(p) for p in self.logs)
        return {k: (",".join(map(str, v)) if isinstance(v, (tuple, list)) else v) for k, v in d.items()}


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    metadata: ArtifactMetadata
    evaluation: dict[str, Any]
    run_id: str | None
    plots: list[Path]
    head: FittedHead  # the fitted sklearn classifier and its target (analysis, parity tests)


def _say(msg: str) -> None:
    print(msg, flush=True)


def train(config: TrainConfig) -> TrainResult:
    """Run the stages in order; see the module docstring."""
    t_start = time.perf_counter()
    cache_dir = config.cache_dir or default_cache_dir()
    check_replaceable(config.out_dir)  # before any work: the target must be ours to replace

    # 1. labelled log -> dataset (split by prompt text, per-request cost)
    read = read_logs(
        config.logs,
        models=(config.cheap_model, config.strong_model) if config.cheap_model and config.strong_model is not None else None,
        options=ReadOptions(pass_threshold=config.pass_threshold, skip_invalid=config.skip_invalid),
    )
    skipped = ", ".join(f"{k}: {v}" for k, v in read.skipped.items()) or "none"
    _say(f"log: {read.rows_read} rows read, {read.rows_used} used, {sum(read.skipped.values())} skipped ({skipped})")
    if config.sample_rows is not None and read.rows_used > config.sample_rows:
        keep = sample_groups([normalize_prompt(r.classifier_text) for r in read.records], config.sample_rows,
                             seed=config.seed)
        _say(f"sample: {len(keep)} of the {read.rows_used} usable rows, whole prompts at a time (--sample-rows)")
        # rows_read == rows_used + sum(skipped) still holds: the rest are counted as not_in_sample
        read = replace(read, records=tuple(read.records[i] for i in keep), rows_used=len(keep),
                       skipped={**read.skipped, "not_in_sample": read.rows_used - len(keep)})
    _say(f"pair: cheap={read.cheap_model}  strong={read.strong_model}")
    with Heartbeat("embedder export (first run only)", say=_say):
        exported = export_embedder(config.embedder, cache_dir, truncation=config.truncation)
    if config.ray:
        from training.embedding.ray_embed import RayOnnxEmbedder

        embedder: OnnxEmbedder = RayOnnxEmbedder(exported, address=config.ray, cache_dir=cache_dir)
    else:
        embedder = OnnxEmbedder(exported, cache_dir=cache_dir)
    prices = PriceTable.load(config.prices, price_as=dict(config.price_as))
    for name, priced in config.price_as:
        _say(f"pricing {name} as {priced} (--price-as)")
    for name in (read.cheap_model, read.strong_model):
        _say(f"price of {name}: {prices.source_of(name)}")
    ds = build_dataset(read, embedder.encoder, prices, fractions=config.split, seed=config.seed,
                       output_tokens=config.output_tokens)
    counts = ds.split_counts()
    _say(f"split by prompt text: {counts}")
    for k, n in counts.items():
        if n == 0:
            raise ValueError(f"the {k} split is empty: the log is too small ({read.rows_used} usable rows)")

    # 2. embedding and features
    emb = embedder.embed(ds.texts, progress=config.progress)
    st = embedder.last_stats
    _say(f"embedding: {int(st['embedded'])} new, {int(st['from_cache'])} cached, {st['texts_per_second']:.0f} texts/s")
    embedder.close()
    X = feature_matrix(emb, ds.texts, ds.n_tokens, features=config.features)

    # 3. head, chosen on validation (log-loss or APGR)
    target = make_target(config.target)
    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    _say(f"fitting heads (target {target.name}, {config.calibration} calibration):")
    with Heartbeat("fitting heads", say=_say):
        head = select_head(X, ds.cheap_passed, ds.strong_passed, train_rows=tr, val_rows=va, target=target,
                           names=config.heads, calibration=config.calibration, seed=config.seed, say=_say,
                           select_by=config.select_by)
    _say(f"chosen head: {head.name} (best validation {'APGR' if config.select_by == 'apgr' else 'log-loss'})")

    # 4. threshold for the goal: certified at the goal's risk (training/risk.py), refit head when cross-fitted
    with Heartbeat("threshold (cross-fitting, certification)", say=_say):
        stage = threshold_stage(head, X, ds.texts, cheap_passed=ds.cheap_passed, strong_passed=ds.strong_passed,
                                cost_cheap=ds.cost_cheap, cost_strong=ds.cost_strong, train_rows=tr, val_rows=va,
                                goal=config.goal, rows=config.threshold_rows, calibration=config.calibration,
                                seed=config.seed)
    head, choice = stage.head, stage.choice
    p_test = head.p_cheap_ok(X[te])
    escalation = None
    answers = [r.answers.get(read.cheap_model) for r in read.records] if config.escalation == "auto" else []
    logprobs = [r.token_logprobs.get(read.cheap_model) for r in read.records] if config.escalation == "auto" else []
    if config.escalation == "auto":
        choice, escalation = with_escalation(stage, answers=answers, cheap_passed=ds.cheap_passed,
                                             strong_passed=ds.strong_passed, cost_cheap=ds.cost_cheap,
                                             cost_strong=ds.cost_strong, goal=config.goal, test_rows=te,
                                             p_test=p_test, seed=config.seed, token_logprobs=logprobs)
    if not choice.met:
        log.warning("the goal %s cannot be met (or certified) on the labelled rows; using the safe end", config.goal)
    for line in describe_choice(choice):
        _say(line)
    for line in describe_escalation(escalation) if escalation is not None else []:
        _say(line)

    # 5. evaluation on the held-out test split, beside the baselines
    evaluation = evaluate(p_test, choice.threshold, cheap_passed=ds.cheap_passed[te], strong_passed=ds.strong_passed[te],
                          cost_cheap=ds.cost_cheap[te], cost_strong=ds.cost_strong[te], texts=[ds.texts[i] for i in te],
                          p_strong_ok=head.p_strong_ok(X[te]), seed=config.seed)
    if escalation is not None and escalation.record.on and escalation.record.evaluation:  # the table leaves it out
        evaluation["escalation"] = dict(escalation.record.evaluation)
    _say(format_evaluation(evaluation))
    if "escalation" in evaluation:
        s = evaluation["escalation"]["served"]
        _say(f"with escalation (what is served; the table's router row leaves it out): cost {s['cost_vs_strong']:.3f} "
             f"of always-strong, quality {s['quality_vs_strong']:.3f}, {s['escalated_share']:.1%} escalated")
    for line in LEGEND:
        _say(line)
    evaluated_stage, evaluated_choice = stage, choice
    if config.threshold_rows == "all":
        with Heartbeat("threshold on every labelled row", say=_say):
            stage, shipped_choice, shipped_escalation = on_every_row(
                stage, escalation, X=X, texts=ds.texts, answers=answers, cheap_passed=ds.cheap_passed,
                strong_passed=ds.strong_passed, cost_cheap=ds.cost_cheap, cost_strong=ds.cost_strong, train_rows=tr,
                val_rows=va, test_rows=te, goal=config.goal, calibration=config.calibration, seed=config.seed,
                token_logprobs=logprobs)
    if stage is not evaluated_stage:
        head, choice, escalation = stage.head, shipped_choice, shipped_escalation
        evaluation["shipped"] = shipped_summary(evaluated_choice, choice)
        _say(f"shipped: the same procedure on every labelled row (the table above checks its train+validation "
             f"version on the {len(te)} test rows, which that version never saw):")
        for line in describe_choice(choice):
            _say(line)
        for line in describe_escalation(escalation) if escalation is not None else []:
            _say(line)

    # 6. artifact: graphs, metadata, parity, staged beside the target
    # the drift reference's rows (training/artifact/reference.py): unseen by the head's fit, except under "all"
    held = np.concatenate([va, te])
    seen = np.concatenate([tr, va, te]) if stage.rows == "all" else np.concatenate([tr, va])  # rows the head saw
    record = TrainingRecord(read=read, head=head, choice=choice, goal=config.goal, evaluation=evaluation,
                            split_rows=counts, logs=config.logs, features=config.features,
                            calibration=config.calibration, pass_threshold=config.pass_threshold,
                            price_as=dict(config.price_as), escalation=escalation,
                            prices=prices.provenance([read.cheap_model, read.strong_model]),
                            trained_prompts=PromptDigest.build(ds.texts[i] for i in seen),
                            drift_reference=build_reference([read.records[i].request for i in held],
                                                            [read.records[i].tags for i in held], ds.n_tokens[held],
                                                            p_cheap_ok=head.p_cheap_ok(X[held]), embeddings=emb[held],
                                                            threshold=choice.threshold, fit_embeddings=emb[tr],
                                                            seed=config.seed))
    held_out = HeldOut([read.records[i].request for i in te], X[te], ds.cheap_passed[te], ds.strong_passed[te])
    with Heartbeat("export (fp32 and int8 graphs, parity checks)", say=_say):
        staged = stage_model_dir(config.out_dir, record, exported, X_val=X[va], train_texts=[ds.texts[i] for i in tr],
                                 held_out=held_out, seed=config.seed, default_graph=config.default_graph)
    try:
        meta = staged.metadata
        par = meta.parity
        assert par is not None
        _say(
            f"export parity: fp32 graph vs sklearn {par.fp32_graph_vs_sklearn_max_abs:.1e}; int8 vs fp32: "
            f"{par.int8_decision_agreement:.1%} decisions agree, APGR differs by {par.int8_apgr_abs_diff:.4f}"
        )
        # 7. report (plots) and tracking: both may fail, and both run before the model is published
        from training.evaluate.plots import save_plots

        plot_dir = report_dir(config.out_dir)
        plots = save_plots(plot_dir, [ds.texts[i] for i in te], p_test, cheap_passed=ds.cheap_passed[te],
                           strong_passed=ds.strong_passed[te], evaluation=evaluation)
        (plot_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        # The held-out rows as a log of their own: what `router-cost savings` should be run on.
        write_log([read.records[i] for i in te], (read.cheap_model, read.strong_model), plot_dir / TEST_LOG)
        with Heartbeat("MLflow tracking", say=_say):
            run_id = _track(config, staged, read, choice=choice, plots=plots, head=head, embed_stats=st,
                            elapsed=time.perf_counter() - t_start)
    except BaseException:
        discard(staged)
        raise
    # 8. publish, last
    publish(staged)
    _say(f"model directory: {config.out_dir}  (default graph {meta.default_graph}, {time.perf_counter() - t_start:.0f}s in all)")
    _say(f"report (plots, evaluation.json, the held-out rows as {TEST_LOG}): {plot_dir}")
    _say(next_steps(config.out_dir, config.price_as, pair=(read.cheap_model, read.strong_model),
                    held_out=stage.rows != "all"))
    return TrainResult(config.out_dir, meta, evaluation, run_id, plots, head)


TEST_LOG = "test.jsonl"


def shipped_summary(evaluated: Any, shipped: Any) -> dict[str, Any]:
    """evaluation.json's "shipped" entry: the threshold certified on every row beside the evaluated one."""
    return {"threshold_rows": shipped.rows, "threshold": float(shipped.threshold), "n_labelled": int(shipped.n_labelled),
            "certified": shipped.certified, "bound": shipped.bound, "strong_share_labelled": float(shipped.strong_share),
            "evaluated_threshold": float(evaluated.threshold), "evaluated_n_labelled": int(evaluated.n_labelled),
            "evaluated_strong_share_labelled": float(evaluated.strong_share)}


def next_steps(out_dir: Path, price_as: tuple[tuple[str, str], ...] = (), pair: tuple[str, str] | None = None, *,
               held_out: bool = True) -> str:
    """What to run next with this model directory (the decision log names the log's models, so the
    observed report needs the same --price-as mapping the router was trained with).

    The gateway forwards an alias (`auto`) as the router's strong model. A router of the public pair
    would send real traffic to gpt-4-1106-preview under a label of Mixtral vs GPT-4 outcomes, so for
    it the gateway line serves the day-0 policy for gpt-4o-mini / gpt-4o instead (docs/policy.md)."""
    from training.data.public import STRONG_MODEL, WEAK_MODEL

    d = str(out_dir)
    mapping = "".join(f" --price-as {shlex.quote(f'{name}={priced}')}" for name, priced in price_as)
    lines = [
        "next:",
        f"  python -m router_model route --model-dir {d} --table \"Summarise this email in one sentence: ...\"",
        f"  router-cost savings --model-dir {d} --log {report_dir(out_dir) / TEST_LOG}   # dollars, "
        + ("on held-out rows" if held_out else "on the evaluation's held-out rows (the shipped head was refit on them "
           "too: new labelled rows give the unbiased figure)"),
        f"  router-serve --model-dir {d} --observe --decision-log decisions.jsonl            # gRPC, observation mode",
    ]
    gateway = "router-gateway --model-dir {} --upstream https://api.openai.com/v1 --decision-log {}"
    if pair == (WEAK_MODEL, STRONG_MODEL):
        return "\n".join([
            *lines,
            f"  router-cost observed --log decisions.jsonl{mapping}   # router-serve decisions, after some traffic",
            "  # Not this router in a gateway to OpenAI: the gateway forwards model \"auto\" as the router's strong model,",
            f"  # here {STRONG_MODEL} (the public data's pair, Mixtral vs GPT-4). For real traffic serve the day-0",
            "  # policy for gpt-4o-mini / gpt-4o (docs/policy.md): observe mode (the default) forwards every call",
            "  # unchanged (\"auto\" as gpt-4o) and logs what the policy would have done:",
            "  router-policy build --out artifacts/policy",
            "  " + gateway.format("artifacts/policy", "decisions-policy.jsonl"),
            "  router-cost observed --log decisions-policy.jsonl   # the gateway decisions (gpt-4o-mini / gpt-4o)",
        ])
    strong = f"its strong model, {pair[1]}" if pair is not None else "the router's strong model"
    return "\n".join([
        *lines,
        f"  # observe mode (the default): every call is forwarded unchanged, model \"auto\" as {strong}; decisions are logged",
        "  " + gateway.format(d, "decisions.jsonl"),
        f"  router-cost observed --log decisions.jsonl{mapping}   # after some traffic",
    ])


def report_dir(out_dir: Path) -> Path:
    """Where plots and evaluation.json go: DIR-report/ beside the model directory."""
    return out_dir.parent / (out_dir.name + "-report")


def _track(config: TrainConfig, staged: StagedArtifact, read, *, choice, plots, head, embed_stats, elapsed) -> str | None:
    if not config.track:
        return None
    from training.tracking import RunRecord, TrackingTarget, track_run

    target = TrackingTarget(config.tracking_uri, config.experiment, config.registered_model)
    run = RunRecord(params=config.params(), read=read, metadata=staged.metadata, model_dir=staged.path, choice=choice,
                    plots=tuple(plots), head=head, embed_stats=dict(embed_stats), elapsed=elapsed)
    return track_run(target, run)
