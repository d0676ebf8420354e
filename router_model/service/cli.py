"""`router-serve`: run the router as a gRPC service.

Every option can also come from an environment variable (listed in --help), which is how a
container is usually configured; a flag on the command line wins over the variable.
Signals: SIGTERM/SIGINT stop gracefully (refuse new calls, drain in-flight ones for
--grace-seconds, exit 0); SIGHUP reopens the decision log (for logrotate) and reloads the model
directory (a bad artifact is refused and logged, the old one keeps serving).
Secrets (admin token, prompt-hash key) come from a file or an environment variable, never from
a flag's value, so they do not show in `ps`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_model.batching import BatchingConfig
from router_model.cli_args import setup_logging
from router_model.errors import ArtifactError, ConfigError
from router_model.service.config import MIN_SECRET_BYTES, ServerConfig
from router_model.settings import (
    DEFAULT_HOST,
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

log = logging.getLogger("router_model.service")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Secrets given directly in the environment (the *_FILE variables and flags name a file instead).
ENV_ADMIN_TOKEN = "ROUTER_ADMIN_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults come from the environment (raises ConfigError on a bad one)."""
    check_renamed()
    p = argparse.ArgumentParser(
        prog="router-serve",
        description="Serve the learned router over gRPC (router.v1.Router, grpc.health.v1, reflection).",
        epilog=(
            "Signals: SIGTERM/SIGINT = graceful shutdown; SIGHUP = reload the model directory. "
            "Observation mode: the response still carries the decision, but callers should only log it, "
            "not route on it. See docs/service.md."
        ),
    )
    opt: list[tuple[Sequence[str], str, dict[str, Any]]] = [
        (["--model-dir"], ENV_MODEL_DIR, dict(type=Path, metavar="DIR", default=env(ENV_MODEL_DIR, Path, None),
                                                  help="trained model directory (started NOT_SERVING without one)")),
        (["--model-uri"], "ROUTER_MODEL_URI", dict(metavar="URI", default=env("ROUTER_MODEL_URI", str, None),
                                                   help="serve a registered version instead: models:/NAME@ALIAS or models:/NAME/VERSION "
                                                        "(downloaded to $ROUTER_CACHE_DIR/registry; docs/operations.md)")),
        (["--follow"], "ROUTER_FOLLOW", dict(type=float, metavar="S", default=env("ROUTER_FOLLOW", float, None),
                                             help="with --model-uri: poll the alias every S seconds and hot-reload when it moves")),
        (["--tracking-uri"], "MLFLOW_TRACKING_URI", dict(metavar="URI", default=env("MLFLOW_TRACKING_URI", str, None),
                                                         help="MLflow tracking URI for --model-uri (default sqlite:///mlflow.db; "
                                                              "an http(s) server is read over REST without MLflow installed)")),
        (["--host"], "ROUTER_HOST", dict(metavar="HOST", default=env("ROUTER_HOST", str, DEFAULT_HOST),
                                        help=f"address to bind, for gRPC and metrics (default {DEFAULT_HOST}; 0.0.0.0 = every interface)")),
        (["--port"], "ROUTER_PORT", dict(type=int, metavar="PORT", default=env("ROUTER_PORT", int, 50051), help="gRPC port (default 50051)")),
        (["--workers"], "ROUTER_WORKERS", dict(type=int, metavar="N", default=env("ROUTER_WORKERS", int, 4),
                                              help="gRPC handler threads (default 4)")),
        (["--threads"], ENV_THREADS, dict(type=int, metavar="N", default=env(ENV_THREADS, int, 1),
                                              help="onnxruntime intra-op threads per inference (default 1)")),
        (["--max-message-bytes"], "ROUTER_MAX_MESSAGE_BYTES",
         dict(type=int, metavar="BYTES", default=env("ROUTER_MAX_MESSAGE_BYTES", int, 4 * 1024 * 1024),
              help="largest gRPC message accepted or sent (default 4 MiB; larger -> RESOURCE_EXHAUSTED)")),
        (["--max-prompt-chars"], "ROUTER_MAX_PROMPT_CHARS",
         dict(type=int, metavar="CHARS", default=env("ROUTER_MAX_PROMPT_CHARS", int, 1_000_000),
              help="largest prompt (or total message text) in characters (default 1,000,000; larger -> INVALID_ARGUMENT)")),
        (["--observe"], "ROUTER_OBSERVE", dict(action=argparse.BooleanOptionalAction, default=env("ROUTER_OBSERVE", parse_bool, False),
                                              help="observation mode: decide and log every decision; callers log, not route")),
        (["--decision-log"], "ROUTER_DECISION_LOG", dict(type=Path, metavar="FILE", default=env("ROUTER_DECISION_LOG", Path, None),
                                                        help="JSON-lines decision log (required with --observe)")),
        (["--log-prompts"], "ROUTER_LOG_PROMPTS", dict(action=argparse.BooleanOptionalAction,
                                                      default=env("ROUTER_LOG_PROMPTS", parse_bool, False),
                                                      help="also store prompt text in the decision log (default: not stored)")),
        (["--prompt-hash-key-file"], "ROUTER_PROMPT_HASH_KEY_FILE",
         dict(type=Path, metavar="FILE", default=env("ROUTER_PROMPT_HASH_KEY_FILE", Path, None),
              help=f"secret (>= {MIN_SECRET_BYTES} bytes) keying the decision log's HMAC-SHA256 of each prompt; "
                   f"without one (or {ENV_PROMPT_HASH_KEY}) no prompt hash is logged")),
        (["--max-batch"], "ROUTER_MAX_BATCH", dict(type=int, metavar="N", default=env("ROUTER_MAX_BATCH", int, 1000),
                                                  help="most requests in one RouteBatch (default 1000; more -> INVALID_ARGUMENT)")),
        (["--max-concurrent-rpcs"], "ROUTER_MAX_CONCURRENT_RPCS",
         dict(type=int, metavar="N", default=env("ROUTER_MAX_CONCURRENT_RPCS", int, 32),
              help="router.v1 calls admitted at once (default 32; more -> RESOURCE_EXHAUSTED)")),
        (["--admin-token-file"], "ROUTER_ADMIN_TOKEN_FILE",
         dict(type=Path, metavar="FILE", default=env("ROUTER_ADMIN_TOKEN_FILE", Path, None),
              help=f"token (>= {MIN_SECRET_BYTES} bytes) a Reload RPC must send as x-router-admin-token metadata "
                   f"(or set {ENV_ADMIN_TOKEN}); without a token Reload is refused unless --allow-reload")),
        (["--allow-reload"], "ROUTER_ALLOW_RELOAD", dict(action=argparse.BooleanOptionalAction,
                                                        default=env("ROUTER_ALLOW_RELOAD", parse_bool, False),
                                                        help="allow Reload without a token (only on a trusted network)")),
        (["--model-root"], "ROUTER_MODEL_ROOT", dict(type=Path, metavar="DIR", default=env("ROUTER_MODEL_ROOT", Path, None),
                                                    help="Reload may only name directories under DIR (default: the parent of --model-dir)")),
        (["--metrics-port"], "ROUTER_METRICS_PORT", dict(type=int, metavar="PORT", default=env("ROUTER_METRICS_PORT", int, None),
                                                        help="serve Prometheus metrics on http://HOST:PORT/metrics")),
        (["--graph"], ENV_GRAPH, dict(choices=GRAPHS, default=env(ENV_GRAPH, parse_choice(*GRAPHS), None),
                                          help="which graph of the artifact to run (default: the artifact's default)")),
        (["--grace-seconds"], "ROUTER_GRACE_SECONDS", dict(type=float, metavar="S", default=env("ROUTER_GRACE_SECONDS", float, 10.0),
                                                          help="how long shutdown waits for in-flight calls (default 10)")),
        (["--watch-interval"], "ROUTER_WATCH_INTERVAL", dict(type=float, metavar="S", default=env("ROUTER_WATCH_INTERVAL", float, None),
                                                            help="reload when the model dir's metadata.json changes, polled every S seconds")),
        (["--batching"], "ROUTER_BATCHING", dict(action=argparse.BooleanOptionalAction, default=env("ROUTER_BATCHING", parse_bool, False),
                                                help="dynamic batching: concurrent Route calls share one graph run (default off)")),
        (["--batch-max-delay-ms"], "ROUTER_BATCH_MAX_DELAY_MS",
         dict(type=float, metavar="MS", default=env("ROUTER_BATCH_MAX_DELAY_MS", float, BatchingConfig.max_delay_ms),
              help=f"with --batching: longest wait for companions while another batch runs (default {BatchingConfig.max_delay_ms:g})")),
        (["--batch-max-size"], "ROUTER_BATCH_MAX_SIZE", dict(type=int, metavar="N", default=env("ROUTER_BATCH_MAX_SIZE", int, BatchingConfig.max_size),
                                                            help=f"with --batching: most requests per graph run (default {BatchingConfig.max_size})")),
        (["--batch-runners"], "ROUTER_BATCH_RUNNERS", dict(type=int, metavar="N", default=env("ROUTER_BATCH_RUNNERS", int, BatchingConfig.runners),
                                                          help=f"with --batching: batches computed at once (default {BatchingConfig.runners})")),
        (["--log-level"], "ROUTER_LOG_LEVEL", dict(type=str.upper, choices=LOG_LEVELS, default=env("ROUTER_LOG_LEVEL", parse_choice(*LOG_LEVELS, upper=True), "INFO"),
                                                  help="logging level (default INFO)")),
    ]
    for flags, var, kwargs in opt:
        kwargs["help"] = f"{kwargs['help']} [env {var}]"
        p.add_argument(*flags, **kwargs)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """A ServerConfig from parsed arguments (raises ConfigError on an inconsistent set)."""
    return ServerConfig(
        model_dir=args.model_dir,
        model_uri=args.model_uri,
        follow=args.follow,
        tracking_uri=args.tracking_uri,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_message_bytes=args.max_message_bytes,
        max_prompt_chars=args.max_prompt_chars,
        observe=args.observe,
        decision_log=args.decision_log,
        log_prompts=args.log_prompts,
        metrics_port=args.metrics_port,
        graph=args.graph,
        grace_seconds=args.grace_seconds,
        watch_interval=args.watch_interval,
        max_batch=args.max_batch,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        admin_token=secret(args.admin_token_file, ENV_ADMIN_TOKEN, "admin token"),
        allow_reload=args.allow_reload,
        model_root=args.model_root,
        prompt_hash_key=secret(args.prompt_hash_key_file, ENV_PROMPT_HASH_KEY, "prompt hash key"),
        batching=BatchingConfig(
            max_delay_ms=args.batch_max_delay_ms, max_size=args.batch_max_size, runners=args.batch_runners
        ) if args.batching else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; exit 0 after a graceful stop, 2 on a configuration error."""
    try:
        parser = build_parser()
    except ConfigError as e:
        print(f"router-serve: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    setup_logging(args.log_level, timestamps=True)
    from router_model.observe.decision_log import DecisionLogError
    from router_model.service.server import create_server

    try:
        running = create_server(config_from_args(args))
    except (ConfigError, DecisionLogError) as e:
        parser.error(str(e))

    stop = threading.Event()

    def reload_in_background() -> None:
        running.reopen_logs()  # logrotate's postrotate sends SIGHUP too
        try:
            result = running.reload()
            log.info("SIGHUP reload: %s -> %s", result.previous_version, result.artifact_version)
        except (ArtifactError, ConfigError) as e:
            log.error("SIGHUP reload refused, still serving the previous artifact: %s", e)
        except Exception:
            log.exception("SIGHUP reload failed, still serving the previous artifact")

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            threading.Thread(target=reload_in_background, name="router-sighup-reload", daemon=True).start()
        else:
            log.info("received %s, shutting down (grace %.1f s)", signal.Signals(signum).name, args.grace_seconds)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(f"router-serve listening on {running.address}", flush=True)
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
    running.stop(args.grace_seconds)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
