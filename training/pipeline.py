"""From a labelled request log to a verified model directory, an evaluation and an MLflow run.

Order of work: read and validate the log; split by normalised prompt text (train / val / test);
embed through the exported ONNX embedder (cached); fit each candidate head on train and pick
the best on val by APGR; choose the threshold on val for the user's goal; evaluate on test
beside random, heuristic and oracle routing; export one ONNX graph (fp32 and int8), verify it
against the sklearn pipeline, write the directory and track the run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import GRAPH_FILES
from router_model.cost import PriceTable
from router_model.features import DEFAULT_FEATURES, check_feature_names, request_features
from training import metrics as M
from training.baselines import heuristic_scores, oracle_scores, random_scores
from training.embed import OnnxEmbedder
from training.embedder import DEFAULT_EMBEDDER, default_cache_dir, export_embedder
from training.head import DEFAULT_HEADS, calibration_folds, candidate_heads, make_target, p_cheap_ok
from training.log import LogReadResult, ReadOptions, read_logs
from training.split import assign_splits, normalize_prompt
from training.threshold import DEFAULT_GOAL, Goal, choose_threshold

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_TOKENS = 250
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded as the run's parameters."""

    logs: tuple[Path, ...]
    out_dir: Path
    cheap_model: str | None = None
    strong_model: str | None = None
    embedder: str = DEFAULT_EMBEDDER
    target: str = "joint"
    features: tuple[str, ...] = DEFAULT_FEATURES
    heads: tuple[str, ...] = ()
    calibration: str = "sigmoid"
    goal: Goal = DEFAULT_GOAL
    pass_threshold: float = 0.8
    skip_invalid: bool = False
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    truncation: str = "head_tail"
    default_graph: str = "auto"
    prices: Path | None = None
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    cache_dir: Path | None = None
    tracking_uri: str | None = None
    experiment: str = "router-model"
    registered_model: str = "router-model"
    track: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.logs:
            raise ValueError("at least one log file is needed")
        check_feature_names(self.features)
        make_target(self.target)
        if (self.cheap_model is None) != (self.strong_model is None):
            raise ValueError("name both --cheap and --strong, or neither (the log's most represented pair is used)")
        if self.cheap_model is not None and self.cheap_model == self.strong_model:
            raise ValueError("the cheap and the strong model must differ")
        if self.default_graph not in ("auto", *GRAPH_FILES):
            raise ValueError(f"default_graph must be auto or one of {sorted(GRAPH_FILES)}")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split fractions must be positive and sum to 1, got {self.split}")
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError("calibration must be sigmoid or isotonic")

    def params(self) -> dict[str, Any]:
        d = asdict(self)
        d["goal"] = f"{self.goal.kind}={self.goal.value}"
        d["logs"] = ",".join(str(p) for p in self.logs)
        return {k: (",".join(map(str, v)) if isinstance(v, (tuple, list)) else v) for k, v in d.items()}


@dataclass
class Dataset:
    """Arrays aligned with the log's records (one row each)."""

    texts: list[str]
    n_tokens: np.ndarray
    groups: list[str]
    w: np.ndarray
    s: np.ndarray
    split: np.ndarray
    cost_cheap: np.ndarray
    cost_strong: np.ndarray
    categories: list[str | None]
    X: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)


@dataclass
class TrainResult:
    model_dir: Path
    metadata: dict[str, Any]
    evaluation: dict[str, Any]
    run_id: str | None
    plots: list[Path]
    head: object | None = None  # the fitted sklearn classifier (analysis, parity tests)
    target: object | None = None


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class RequestCosts:
    """Per-request token counts and dollars on each model, aligned with the log's records."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cheap: np.ndarray
    strong: np.ndarray
    pricing: Any  # router_model.cost.PairPricing


def request_costs(read: LogReadResult, prices: PriceTable, output_tokens: int) -> RequestCosts:
    """Token counts from the log, else documented estimates (input ceil(chars / 4), output as given)."""
    pair = prices.pricing_for_pair(read.cheap_model, read.strong_model, fallback=True)
    inp = np.array(
        [r.input_tokens if r.input_tokens is not None else math.ceil(len(r.full_text) / CHARS_PER_TOKEN) for r in read.records],
        dtype=float,
    )
    out = np.array([r.output_tokens if r.output_tokens is not None else output_tokens for r in read.records], dtype=float)
    cost = lambda p: (inp * p.input + out * p.output) / 1e6  # noqa: E731
    return RequestCosts(inp, out, cost(pair.cheap), cost(pair.strong), pair)


def build_dataset(read: LogReadResult, config: TrainConfig, encoder, prices: PriceTable) -> Dataset:
    texts = [r.classifier_text for r in read.records]
    n_tokens = np.array([encoder.count_tokens(r.full_text) for r in read.records], dtype=np.int64)
    groups = [normalize_prompt(t) for t in texts]
    split = assign_splits(groups, fractions=config.split, seed=config.seed)
    w = np.array([float(r.passed[read.cheap_model]) for r in read.records])
    s = np.array([float(r.passed[read.strong_model]) for r in read.records])
    costs = request_costs(read, prices, config.output_tokens)
    return Dataset(texts, n_tokens, groups, w, s, split, costs.cheap, costs.strong, [r.category for r in read.records])


def score_block(name: str, r: np.ndarray, ds: Dataset, idx: np.ndarray) -> dict[str, float]:
    w, s = ds.w[idx], ds.s[idx]
    return {
        "apgr": M.apgr(r, w, s),
        "cpt50": M.cpt(r, w, s, 50),
        "cpt80": M.cpt(r, w, s, 80),
    }


def _at_share(r: np.ndarray, share: float, ds: Dataset, idx: np.ndarray) -> dict[str, float]:
    """Route the top `share` by score to strong (ties by order) and report what it achieves."""
    n = len(idx)
    k = int(round(share * n))
    order = np.argsort(-r, kind="stable")
    strong = np.zeros(n, dtype=bool)
    strong[order[:k]] = True
    res = M.evaluate_routing(strong, ds.w[idx], ds.s[idx], ds.cost_cheap[idx], ds.cost_strong[idx])
    return {
        "strong_share": res.strong_share,
        "quality_vs_strong": res.quality_vs_strong,
        "pass_rate": res.quality,
        "cost_saved": res.cost_saved_fraction,
    }


def evaluate(p_test: np.ndarray, threshold: float, ds: Dataset, idx: np.ndarray, seed: int) -> dict[str, Any]:
    """Held-out metrics for the router and the baselines on the same rows."""
    w, s = ds.w[idx], ds.s[idx]
    ok = 1.0 - ((w < 0.5) & (s >= 0.5)).astype(float)  # cheap loses nothing
    r = 1.0 - p_test
    strong = p_test < threshold
    res = M.evaluate_routing(strong, w, s, ds.cost_cheap[idx], ds.cost_strong[idx])
    router = {
        **score_block("router", r, ds, idx),
        "auc": M.auc(p_test, ok),
        "ece": M.ece(p_test, ok, n_bins=15),
        "brier": M.brier(p_test, ok),
        "strong_share": res.strong_share,
        "pass_rate": res.quality,
        "quality_vs_strong": res.quality_vs_strong,
        "cost_saved": res.cost_saved_fraction,
    }
    share = res.strong_share
    baselines = {
        "random": random_scores(len(idx), seed=seed),
        "heuristic": heuristic_scores([ds.texts[i] for i in idx]),
        "oracle": oracle_scores(w, s),
    }
    out: dict[str, Any] = {"router": router, "n_test": int(len(idx)), "q_weak": float(w.mean()), "q_strong": float(s.mean())}
    for name, score in baselines.items():
        block = score_block(name, score, ds, idx) if name != "random" else {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}
        block.update(_at_share(score, share, ds, idx))
        out[name] = block
    return out


def format_evaluation(ev: dict[str, Any]) -> str:
    cols = ["apgr", "cpt50", "cpt80", "strong_share", "quality_vs_strong", "cost_saved"]
    head = f"{'router':<11}" + "".join(f"{c:>18}" for c in cols)
    lines = [
        f"Held-out test set: {ev['n_test']} prompts (cheap pass rate {ev['q_weak']:.3f}, strong {ev['q_strong']:.3f})",
        head,
    ]
    for name in ("router", "random", "heuristic", "oracle"):
        b = ev[name]
        lines.append(f"{name:<11}" + "".join(f"{b[c]:>18.3f}" for c in cols))
    r = ev["router"]
    lines.append(f"router calibration: AUC {r['auc']:.3f}  ECE {r['ece']:.3f}  Brier {r['brier']:.3f}")
    lines.append("random routing is shown in expectation (APGR 0.5, CPT(p%) = p%) and at the router's strong share.")
    return "\n".join(lines)


def _fit_heads(ds: Dataset, config: TrainConfig, target) -> tuple[str, object, dict[str, dict[str, float]]]:
    tr, va = ds.rows("train"), ds.rows("val")
    y = target.labels(ds.w >= 0.5, ds.s >= 0.5)
    factories = candidate_heads(seed=config.seed, calibration=config.calibration)
    names = list(config.heads) or list(DEFAULT_HEADS)
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; known: {sorted(factories)}")
    n_classes_train = len(np.unique(y[tr]))
    if n_classes_train < 2:
        raise ValueError("the training split has a single outcome class; the log needs rows where the models differ")
    scores: dict[str, dict[str, float]] = {}
    best: tuple[float, str, object] | None = None
    min_class = int(np.bincount(y[tr]).min()) if len(tr) else 0
    for name in names:
        t0 = time.perf_counter()
        model = factories[name]()
        if min_class < 5:  # tiny logs: fewer calibration folds than the rarest class size
            model.set_params(cv=calibration_folds(max(2, min(5, min_class or 2)), config.seed))
        model.fit(ds.X[tr], y[tr])
        p_val = p_cheap_ok(model, ds.X[va], target)
        val = score_block(name, 1.0 - p_val, ds, va) if len(np.unique(ds.s[va] - ds.w[va])) > 1 else {"apgr": float("nan")}
        val["fit_seconds"] = time.perf_counter() - t0
        scores[name] = val
        _say(f"  head {name:<12} val APGR {val['apgr']:.4f}  ({val['fit_seconds']:.1f}s)")
        key = val["apgr"] if not math.isnan(val["apgr"]) else -1.0
        if best is None or key > best[0]:
            best = (key, name, model)
    assert best is not None
    return best[1], best[2], scores


def train(config: TrainConfig) -> TrainResult:
    """Run the whole pipeline; see the module docstring for the order of work."""
    t_start = time.perf_counter()
    cache_dir = config.cache_dir or default_cache_dir()
    read = read_logs(
        config.logs,
        models=(config.cheap_model, config.strong_model) if config.cheap_model else None,
        options=ReadOptions(pass_threshold=config.pass_threshold, skip_invalid=config.skip_invalid),
    )
    skipped = ", ".join(f"{k}: {v}" for k, v in read.skipped.items()) or "none"
    _say(f"log: {read.rows_read} rows read, {read.rows_used} used, {sum(read.skipped.values())} skipped ({skipped})")
    _say(f"pair: cheap={read.cheap_model}  strong={read.strong_model}")
    prices = PriceTable.load(config.prices)

    exported = export_embedder(config.embedder, cache_dir, truncation=config.truncation)
    embedder = OnnxEmbedder(exported, cache_dir=cache_dir)
    ds = build_dataset(read, config, embedder.encoder, prices)
    counts = {k: int((ds.split == k).sum()) for k in ("train", "val", "test")}
    _say(f"split by prompt text: {counts}")
    for k, n in counts.items():
        if n == 0:
            raise ValueError(f"the {k} split is empty: the log is too small ({read.rows_used} usable rows)")

    emb = embedder.embed(ds.texts, progress=config.progress)
    st = embedder.last_stats
    _say(f"embedding: {int(st['embedded'])} new, {int(st['from_cache'])} cached, {st['texts_per_second']:.0f} texts/s")
    embedder.close()
    feats = request_features(ds.texts, ds.n_tokens, config.features)
    ds.X = np.hstack([emb, feats]).astype(np.float32) if config.features else emb

    target = make_target(config.target)
    _say(f"fitting heads (target {target.name}, {config.calibration} calibration):")
    head_name, model, head_scores = _fit_heads(ds, config, target)
    _say(f"chosen head: {head_name} (best validation APGR)")

    va, te = ds.rows("val"), ds.rows("test")
    p_val = p_cheap_ok(model, ds.X[va], target)
    choice = choose_threshold(p_val, ds.w[va], ds.s[va], ds.cost_cheap[va], ds.cost_strong[va], config.goal)
    if not choice.met:
        log.warning("the goal %s cannot be met on validation data; using the closest safe threshold", config.goal)
    _say(
        f"threshold {choice.threshold:.4f} for {config.goal.kind}={config.goal.value} (val: strong share "
        f"{choice.strong_share:.3f}, quality vs strong {choice.quality_vs_strong:.3f}, met={choice.met})"
    )
    p_test = p_cheap_ok(model, ds.X[te], target)
    evaluation = evaluate(p_test, choice.threshold, ds, te, config.seed)
    _say(format_evaluation(evaluation))

    from training.artifact_writer import write_model_dir

    artifact = write_model_dir(
        config=config,
        read=read,
        exported=exported,
        model=model,
        target=target,
        threshold=choice,
        evaluation=evaluation,
        head_name=head_name,
        head_scores=head_scores,
        ds=ds,
    )
    from training.plots import save_plots

    plot_dir = config.out_dir.parent / (config.out_dir.name + "-report")
    plots = save_plots(plot_dir, ds, te, p_test, evaluation)
    (plot_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    elapsed = time.perf_counter() - t_start
    par = artifact["parity"]
    _say(
        f"export parity: fp32 graph vs sklearn {par['fp32_graph_vs_sklearn_max_abs']:.1e}; int8 vs fp32: "
        f"{par['int8_decision_agreement']:.1%} decisions agree, APGR differs by {par['int8_apgr_abs_diff']:.4f}"
    )
    _say(f"model directory: {config.out_dir}  (default graph {artifact['default_graph']}, {elapsed:.0f}s in all)")

    run_id = None
    if config.track:
        from training.tracking import track_run

        run_id = track_run(config, read, artifact, evaluation, head_scores, choice, plots, model, st, elapsed)
    return TrainResult(config.out_dir, artifact, evaluation, run_id, plots, head=model, target=target)
