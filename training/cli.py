"""`router-train`: train, evaluate, export and track a router from labelled request logs."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from router_model.artifact import GRAPHS
from router_model.cli_args import add_price_options, open_share, setup_logging
from router_model.cost import DEFAULT_OUTPUT_TOKENS
from router_model.errors import RouterError
from router_model.features import DEFAULT_FEATURES, FEATURES
from training.embedding.common import DEFAULT_EMBEDDER
from training.head import DEFAULT_HEADS, DEFAULT_SELECT_BY, TARGETS
from training.risk import CERTIFICATES, DEFAULT_CERTIFICATE, EXACT_MAX_ROWS
from training.threshold import DEFAULT_RISK, THRESHOLD_ROWS, Goal

EPILOG = """
Goals (pick one; default --quality-floor 0.95 --risk 0.05):
  --quality-floor F        keep at least F x the always-strong quality, with as many cheap calls as possible
  --max-strong-share S     at most S of calls to the strong model, best quality within it
  --max-cost-per-request D at most D dollars per request on average, best quality within it
  --risk R                 the goal holds on new traffic with probability >= 1 - R (default 0.05;
                           Learn-then-Test, docs/guarantee.md); 'none' = just meet it on validation

Examples:
  router-train                                   # the default public data (RouteLLM MMLU + MT-Bench)
  router-train --log requests.jsonl --cheap gpt-4o-mini --strong gpt-4o --out models/router
  router-train --log old.jsonl --log new.jsonl --max-strong-share 0.3 --skip-invalid
Retraining on a log that grew only embeds the new rows (embeddings are cached by embedder and text).
"""


def _risk(text: str) -> float | None:
    """--risk: a probability in (0, 1), or 'none' for the empirical rule."""
    if text.strip().lower() == "none":
        return None
    try:
        return open_share(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1) or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-train",
        description="Train a calibrated cheap-vs-strong router from a labelled request log, choose its "
        "threshold for a goal, evaluate it on held-out prompts, export it to ONNX and track the run in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log", action="append", type=Path, default=[], metavar="FILE",
                   help="labelled request log (JSONL, see data/README.md); repeat for several files. "
                   "Default: the public RouteLLM MMLU + MT-Bench outcomes (../shared/data or downloaded).")
    p.add_argument("--cheap", metavar="NAME", help="the cheap model's name in the log (default: of the most represented pair, the one with the lower pass rate)")
    p.add_argument("--strong", metavar="NAME", help="the strong model's name in the log (default: the other model of that pair)")
    p.add_argument("--models", metavar="LIST",
                   help="route among N models: comma-separated names in the log, or 'all' (one calibrated head per model, "
                   "the cheapest model that clears the bar; docs/multi_model.md). Replaces --cheap/--strong")
    p.add_argument("--out", type=Path, default=Path("artifacts/router"), metavar="DIR",
                   help="model directory to write (replaced atomically; default: %(default)s). Plots and "
                   "evaluation.json go to DIR-report/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quality-floor", type=float, metavar="F", help="goal: quality at least F x always-strong (default 0.95)")
    g.add_argument("--max-strong-share", type=float, metavar="S", help="goal: at most this share of strong calls")
    g.add_argument("--max-cost-per-request", type=float, metavar="USD", help="goal: mean cost per request at most USD")
    p.add_argument("--risk", type=_risk, default=DEFAULT_RISK, metavar="R",
                   help="allowed chance that the goal fails on new traffic from the same distribution (default: "
                   "%(default)s; certified by Learn-then-Test, docs/guarantee.md); 'none' picks the threshold where "
                   "validation just meets the goal, with no guarantee")
    p.add_argument("--certificate", choices=CERTIFICATES, default=DEFAULT_CERTIFICATE,
                   help="the test behind the certified goal: exact = one exact test of the passes lost and won per "
                   f"threshold at the full risk (a quality floor with two models, up to {EXACT_MAX_ROWS:,} rows; "
                   "otherwise betting); betting = one betting test of the per-request quantity at the full risk; "
                   "clopper-pearson = the earlier union of exact bounds (default: %(default)s; docs/guarantee.md)")
    p.add_argument("--threshold-rows", choices=THRESHOLD_ROWS, default="all",
                   help="rows the threshold is certified on: all = after the held-out evaluation, cross-fitted scores "
                   "over every labelled row (the test split included), the head then refit on all of them; "
                   "oof = cross-fitted scores over train + validation, the head refit on both; validation = the "
                   "validation split only (default: %(default)s; docs/guarantee.md)")
    p.add_argument("--escalation", choices=("auto", "off"), default="auto",
                   help="auto: when the log kept the cheap model's answers (router-label, shadow grading), also fit "
                   "an answer-quality score and certify route-then-escalate against routing alone, each at half the "
                   "risk, serving the cheaper (a quality floor with a risk only); off: routing alone at the full "
                   "risk (default: %(default)s; docs/guarantee.md)")
    p.add_argument("--select-heads-by", choices=("log_loss", "apgr"), default=DEFAULT_SELECT_BY,
                   help="how the candidate heads are compared on validation (default: %(default)s)")
    p.add_argument("--pass-threshold", type=float, default=0.8, metavar="T",
                   help="a score outcome passes when score >= T (default: %(default)s)")
    p.add_argument("--sample-rows", type=int, metavar="N", default=None,
                   help="train on a deterministic spread sample of about N rows (whole prompts at a time; the rest "
                        "are counted as not_in_sample): a demo or a quick look at a big log")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed rows (counted and reported by reason) instead of stopping at them")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, metavar="NAME_OR_PATH",
                   help="sentence-transformers model name or local path (default: %(default)s, bundled offline); "
                   "'model2vec' (or model2vec:NAME): a static embedder distilled from it, ~10x faster per decision, "
                   "APGR ~0.01 lower on MMLU (training/embedding/static.py)")
    p.add_argument("--target", choices=TARGETS, default="joint",
                   help="joint: one 4-class model of (both/only cheap/only strong/neither) passing; cheap_ok: "
                   "binary 'cheap loses nothing' (default: %(default)s)")
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES), metavar="LIST",
                   help=f"comma-separated request features beside the embedding, or 'none' (known: {', '.join(FEATURES)})")
    p.add_argument("--heads", default="", metavar="LIST",
                   help=f"comma-separated candidate classifiers to try; the best on validation (--select-heads-by) wins (default: "
                   f"{','.join(DEFAULT_HEADS)}; also known: logreg_c1)")
    p.add_argument("--calibration", choices=("sigmoid", "isotonic"), default="sigmoid", help="probability calibration (default: %(default)s)")
    p.add_argument("--truncation", choices=("head_tail", "head"), default="head_tail",
                   help="how prompts longer than the embedder's window are cut (default: %(default)s)")
    p.add_argument("--graph", choices=("auto", *GRAPHS), default="auto",
                   help="graph served by default: auto picks int8 when it agrees with fp32 on >=99%% of test decisions "
                   "and its APGR is within 0.005 (default: %(default)s)")
    add_price_options(p, price_as_default="without --log the public pair is priced as gpt-4o-mini / gpt-4o this way")
    p.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS, metavar="N",
                   help="output tokens per request assumed for cost when the log has none (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the classifiers (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="embedding and export cache (default: $ROUTER_CACHE_DIR or ~/.cache/router-model)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="router-model", help="MLflow experiment name (default: %(default)s)")
    p.add_argument("--registered-model", default="router-model", help="MLflow registered model name (default: %(default)s)")
    p.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: long stages print a line every 30 s instead (embedding: count, rate, time left)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="embed on Ray Data: 'auto' (this node's cluster), 'ray://HOST:10001' or 'local'; same cache, "
                   "same embeddings; needs the ray extra (docs/scale.md)")
    return p


def config_from_args(args: argparse.Namespace):
    from training.data.public import PUBLIC_PRICE_AS, default_public_logs
    from training.pipeline import TrainConfig

    if args.max_strong_share is not None:
        goal = Goal.max_strong_share(args.max_strong_share, args.risk, args.certificate)
    elif args.max_cost_per_request is not None:
        goal = Goal.max_cost_per_request(args.max_cost_per_request, args.risk, args.certificate)
    else:
        goal = Goal.quality_floor(args.quality_floor if args.quality_floor is not None else 0.95, args.risk,
                                  args.certificate)
    logs = tuple(args.log) or tuple(default_public_logs())
    price_as = tuple(args.price_as)
    if not args.log and not price_as:
        # The public outcomes are Mixtral-8x7B vs GPT-4-1106, the only pair graded on the same prompts
        # there; their dollar figures use the GPT-4o-class list prices, and training says so.
        price_as = tuple(PUBLIC_PRICE_AS.items())
    features = () if args.features.strip().lower() == "none" else tuple(f.strip() for f in args.features.split(",") if f.strip())
    return TrainConfig(
        logs=logs,
        out_dir=args.out,
        cheap_model=args.cheap,
        strong_model=args.strong,
        models=args.models,
        embedder=args.embedder,
        target=args.target,
        features=features,
        heads=tuple(h.strip() for h in args.heads.split(",") if h.strip()),
        calibration=args.calibration,
        goal=goal,
        threshold_rows=args.threshold_rows,
        escalation=args.escalation,
        select_by=args.select_heads_by,
        pass_threshold=args.pass_threshold,
        skip_invalid=args.skip_invalid,
        sample_rows=args.sample_rows,
        seed=args.seed,
        truncation=args.truncation,
        default_graph=args.graph,
        prices=Path(args.prices) if args.prices else None,
        price_as=price_as,
        output_tokens=args.output_tokens,
        cache_dir=args.cache_dir,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        registered_model=args.registered_model,
        track=not args.no_track,
        progress=not args.no_progress,
        ray=args.ray,
    )


def _exit_on_signal(signum: int, frame: object) -> None:
    # SIGTERM/SIGHUP would otherwise end the process without unwinding: the staged model
    # directory (tens of MB) would be left behind. SystemExit unwinds and cleans up.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        config = config_from_args(args)
        from training.pipeline import train

        if config.models is not None:
            from training.multi.pipeline import train_multi

            train_multi(config)
        else:
            train(config)
    except (RouterError, ValueError, FileNotFoundError) as e:
        print(f"router-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
