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
from router_model.errors import ConfigError, RouterError
from router_model.gateway.config import MODES, load_config
from router_model.settings import ENV_PROMPT_HASH_KEY, secret

log = logging.getLogger("router_model.gateway")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-gateway",
        description="OpenAI-compatible gateway: decide cheap vs strong per chat completion, forward, log. "
        "Options override the config file.",
    )
    p.add_argument("--model-dir", metavar="DIR", help="trained router directory")
    p.add_argument("--model-uri", metavar="URI", help="serve a registered version instead: models:/NAME@ALIAS (docs/operations.md)")
    p.add_argument("--follow", type=float, metavar="S", help="with --model-uri: poll the alias every S seconds and reload when it moves")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI for --model-uri (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--upstream", metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML (.toml) config file (docs/gateway.md)")
    p.add_argument("--mode", choices=MODES, help="observe (default): decide and log, forward the model asked for; route: forward the decision")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--decision-log", metavar="FILE", help="append every decision (JSON lines)")
    p.add_argument("--log-prompts", action="store_true", default=None, help="also store the messages in the decision log")
    p.add_argument("--prompt-hash-key-file", metavar="FILE",
                   help=f"key of the decision log's prompt HMAC (or ${ENV_PROMPT_HASH_KEY}); without one no prompt hash is logged")
    p.add_argument("--watch-interval", type=float, metavar="S", help="reload when metadata.json changes, polled every S seconds")
    p.add_argument("--prices", metavar="FILE", help="price file overriding/extending the packaged prices")
    p.add_argument("--batching", action="store_true", default=None,
                   help="dynamic batching: concurrent decisions share one graph run (tune it under `batching` in the config file)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(
            args.config, upstream_url=args.upstream, model_dir=args.model_dir, mode=args.mode, host=args.host,
            port=args.port, decision_log=args.decision_log, log_prompts=args.log_prompts,
            watch_interval=args.watch_interval, prices=args.prices, model_uri=args.model_uri, follow=args.follow,
        )
        if args.batching and config.batching is None:
            config = dataclasses.replace(config, batching=BatchingConfig())
        key = secret(Path(args.prompt_hash_key_file) if args.prompt_hash_key_file else None, ENV_PROMPT_HASH_KEY,
                     "prompt hash key")
        if key is not None:
            config = dataclasses.replace(config, prompt_hash_key=key)
        if config.model_uri is not None:
            if config.model_dir is not None:
                raise ConfigError("name either a model directory or a model URI (--model-uri), not both")
            from router_model.registry import follow_link

            link = follow_link(config.model_uri, tracking=args.tracking_uri, interval=config.follow)
            config = dataclasses.replace(config, model_dir=link, watch_interval=config.follow or config.watch_interval)
        if config.model_dir is None:
            raise ConfigError("no router: pass --model-dir DIR or set model_dir in the config file")
        import uvicorn

        from router_model.gateway.app import create_app

        app = create_app(config)
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
    if stopped:
        log.info("router-gateway stopped (signal %d)", stopped[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
