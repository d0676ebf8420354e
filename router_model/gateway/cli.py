"""`router-gateway`: the OpenAI-compatible routing gateway in front of an upstream."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from router_model.batching import BatchingConfig
from router_model.cli_args import LOG_LEVELS, setup_logging
from router_model.errors import ConfigError, RouterError
from router_model.gateway.config import MODES, load_config
from router_model.gateway.tracing import provider_from_env, shutdown
from router_model.settings import (
    ENV_GRAPH,
    ENV_MODEL_DIR,
    ENV_PROMPT_HASH_KEY,
    ENV_THREADS,
    GRAPHS,
    check_renamed,
    env,
    parse_bool,
    parse_choice,
    secret,
)

log = logging.getLogger("router_model.gateway")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. The serving flags it shares with router-serve read the same environment
    variables (settings.py); options and variables override the config file."""
    check_renamed()
    p = argparse.ArgumentParser(
        prog="router-gateway",
        description="OpenAI-compatible gateway: decide cheap vs strong per chat completion, forward, log. "
        "Options override the config file.",
    )
    p.add_argument("--model-dir", metavar="DIR", default=env(ENV_MODEL_DIR, str, None),
                   help=f"trained router directory (${ENV_MODEL_DIR})")
    p.add_argument("--model-uri", metavar="URI", default=env("ROUTER_MODEL_URI", str, None),
                   help="serve a registered version instead: models:/NAME@ALIAS ($ROUTER_MODEL_URI; docs/operations.md)")
    p.add_argument("--follow", type=float, metavar="S", default=env("ROUTER_FOLLOW", float, None),
                   help="with --model-uri: poll the alias every S seconds and reload when it moves ($ROUTER_FOLLOW)")
    p.add_argument("--tracking-uri", metavar="URI", default=env("MLFLOW_TRACKING_URI", str, None),
                   help="MLflow tracking URI for --model-uri (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--graph", choices=GRAPHS, default=env(ENV_GRAPH, parse_choice(*GRAPHS), None),
                   help=f"which graph to serve (default: the artifact's own, usually int8; ${ENV_GRAPH})")
    p.add_argument("--threads", type=int, metavar="N", default=env(ENV_THREADS, int, None),
                   help=f"onnxruntime intra-op threads per decision (default 1; ${ENV_THREADS})")
    p.add_argument("--upstream", metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML (.toml) config file (docs/gateway.md)")
    p.add_argument("--mode", choices=MODES, help="observe (default): decide and log, forward the model asked for; route: forward the decision")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--decision-log", metavar="FILE", default=env("ROUTER_DECISION_LOG", str, None),
                   help="append every decision (JSON lines; $ROUTER_DECISION_LOG)")
    p.add_argument("--log-prompts", action="store_true", default=env("ROUTER_LOG_PROMPTS", parse_bool, None),
                   help="also store the messages in the decision log ($ROUTER_LOG_PROMPTS)")
    p.add_argument("--prompt-hash-key-file", metavar="FILE",
                   help=f"key of the decision log's prompt HMAC (or ${ENV_PROMPT_HASH_KEY}); without one no prompt hash is logged")
    p.add_argument("--watch-interval", type=float, metavar="S", default=env("ROUTER_WATCH_INTERVAL", float, None),
                   help="reload when metadata.json changes, polled every S seconds ($ROUTER_WATCH_INTERVAL)")
    p.add_argument("--prices", metavar="FILE", help="price file overriding/extending the packaged prices")
    p.add_argument("--batching", action="store_true", default=env("ROUTER_BATCHING", parse_bool, None),
                   help="dynamic batching: concurrent decisions share one graph run (tune it under `batching` in the config file)")
    p.add_argument("--no-answer-score", dest="answer_score", action="store_const", const=False, default=None,
                   help="do not escalate on the artifact's answer score, even when it has one (`checks.answer_score` in the "
                   "config file; the fast checks still apply)")
    p.add_argument("--buffer-streams", dest="buffer_streams", action="store_const", const=True, default=None,
                   help="route mode: read a cheap model's stream ahead (up to 4 MiB) and score it with the artifact's "
                   "answer score before sending it, escalating it like a non-streamed answer; the client sees nothing "
                   "until the cheap answer is complete (`checks.buffer_streams` in the config file; default off)")
    p.add_argument("--log-level", default=env("ROUTER_LOG_LEVEL", parse_choice(*LOG_LEVELS), "info"), choices=LOG_LEVELS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ConfigError as exc:  # a bad environment variable
        print(f"router-gateway: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    setup_logging(args.log_level, timestamps=True)
    try:
        config = load_config(
            args.config, upstream_url=args.upstream, model_dir=args.model_dir, mode=args.mode, host=args.host,
            port=args.port, decision_log=args.decision_log, log_prompts=args.log_prompts,
            watch_interval=args.watch_interval, prices=args.prices, model_uri=args.model_uri, follow=args.follow,
            graph=args.graph, threads=args.threads, tracking_uri=args.tracking_uri, answer_score=args.answer_score,
            buffer_streams=args.buffer_streams,
        )
        if args.batching and config.batching is None:
            config = dataclasses.replace(config, batching=BatchingConfig())
        key = secret(Path(args.prompt_hash_key_file) if args.prompt_hash_key_file else None, ENV_PROMPT_HASH_KEY,
                     "prompt hash key")
        if key is not None:
            config = dataclasses.replace(config, prompt_hash_key=key)
        if config.model_dir is None and config.model_uri is None:
            raise ConfigError("no router: pass --model-dir DIR (or --model-uri URI) or set model_dir in the config file")
        import uvicorn

        from router_model.gateway.app import create_app

        tracer_provider = provider_from_env()  # OpenTelemetry traces from OTEL_*: off unless asked for
        app = create_app(config, tracer_provider=tracer_provider)
    except RouterError as exc:  # ConfigError, a bad price file, an unwritable decision log
        parser.error(str(exc))
    gateway = app.state.gateway
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: gateway.request_reload())
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal under the
    # handler it found: with this one installed the process exits 0 after a graceful stop.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    log.info("router-gateway on http://%s:%d -> %s (mode %s)", config.host, config.port, config.upstream.base_url, config.mode)
    uvicorn.run(
        app, host=config.host, port=config.port, log_level=args.log_level, lifespan="on",
        timeout_graceful_shutdown=math.ceil(config.grace_seconds), access_log=False,
    )
    shutdown(tracer_provider)  # export the last spans
    if stopped:
        log.info("router-gateway stopped (signal %d)", stopped[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
