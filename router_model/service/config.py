"""ServerConfig: everything `create_server` needs, checked once when it is built.

Free of gRPC imports so that `router-serve --help` and config errors need no server machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router_model.batching import BatchingConfig
from router_model.errors import ConfigError
from router_model.settings import DEFAULT_HOST, GRAPHS

# A shorter admin token or prompt-hash key is too easy to guess.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_server` needs; `router-serve` builds one from flags and env vars.

    `workers` is the gRPC handler thread count and `threads` onnxruntime's intra-op thread count
    per session (None = Router.load's default); see docs/service.md for the choice on 2 cores.
    `model_dir` may be None: the server then starts NOT_SERVING until a Reload names one.
    `watch_interval` (seconds) polls the model directory's metadata.json and reloads on change.
    `host` is also where the metrics HTTP server binds.

    Limits (docs/service.md, "Operating limits"): `max_batch` items per RouteBatch;
    `max_concurrent_rpcs` router.v1 calls admitted at once (the rest get RESOURCE_EXHAUSTED);
    of those, `workers` compute at a time, a batch taking turns chunk by chunk.
    Admin: Reload needs `admin_token` (sent as the `x-router-admin-token` metadata) or
    `allow_reload`; a Reload path must lie under `reload_root`. `prompt_hash_key` keys the
    decision log's prompt hash (none is written without it). Secrets are kept out of repr.
    """

    model_dir: Path | None = None
    host: str = DEFAULT_HOST
    port: int = 50051
    workers: int = 4
    threads: int | None = 1
    max_message_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 1_000_000
    observe: bool = False
    decision_log: Path | None = None
    log_prompts: bool = False
    metrics_port: int | None = None
    graph: str | None = None
    grace_seconds: float = 10.0
    batch_chunk: int = 32
    watch_interval: float | None = None
    max_batch: int = 1000
    max_concurrent_rpcs: int = 32
    admin_token: bytes | None = field(default=None, repr=False)
    allow_reload: bool = False
    model_root: Path | None = None
    prompt_hash_key: bytes | None = field(default=None, repr=False)
    # Serve by registry alias instead of model_dir (router_model.registry): `follow` seconds polls the alias.
    model_uri: str | None = None
    follow: float | None = None
    tracking_uri: str | None = None
    # Dynamic batching of concurrent Route calls (router_model/batching.py); None = one run per call.
    batching: BatchingConfig | None = None

    def __post_init__(self) -> None:
        for name in ("model_dir", "decision_log", "model_root"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")
        for name in ("workers", "max_message_bytes", "max_prompt_chars", "batch_chunk", "max_batch", "max_concurrent_rpcs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or None, got {self.threads}")
        if self.model_uri is not None:
            from router_model.registry import ModelUri

            ModelUri.parse(self.model_uri)
            if self.model_dir is not None:
                raise ConfigError("name either a model directory or a model URI (--model-uri), not both")
        if self.follow is not None and (self.model_uri is None or self.follow <= 0):
            raise ConfigError(f"follow needs a model URI and a positive number of seconds, got {self.follow}")
        if self.watch_interval is not None and self.watch_interval <= 0:
            raise ConfigError(f"watch_interval must be positive or None, got {self.watch_interval}")
        if self.grace_seconds < 0:
            raise ConfigError(f"grace_seconds must not be negative, got {self.grace_seconds}")
        if self.graph is not None and self.graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.observe and self.decision_log is None:
            raise ConfigError("observation mode needs a decision log path (--decision-log)")
        if self.log_prompts and self.decision_log is None:
            raise ConfigError("--log-prompts needs a decision log path (--decision-log)")
        for name in ("admin_token", "prompt_hash_key"):
            value = getattr(self, name)
            if value is not None and len(value) < MIN_SECRET_BYTES:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes, got {len(value)}")

    @property
    def reload_root(self) -> Path | None:
        """The directory a Reload RPC may name models under: `model_root`, else the parent of
        `model_dir` (where a deploy puts its versions beside a `current` link)."""
        if self.model_root is not None:
            return self.model_root
        return self.model_dir.parent if self.model_dir is not None else None
