"""ServerConfig: everything `create_server` needs, checked once when it is built.

Free of gRPC imports so that `router-serve --help` and config errors need no server machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router_model.errors import ConfigError
from router_model.serving.config import MIN_SECRET_BYTES, ServingConfig


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ServingConfig):
    """Everything `create_server` needs; `router-serve` builds one from flags and env vars.

    The model, its reloads and the decision log are the shared `ServingConfig`'s fields.

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

    port: int = 50051
    workers: int = 4
    max_message_bytes: int = 4 * 1024 * 1024
    max_prompt_chars: int = 1_000_000
    observe: bool = False
    metrics_port: int | None = None
    grace_seconds: float = 10.0
    batch_chunk: int = 32
    max_batch: int = 1000
    max_concurrent_rpcs: int = 32
    admin_token: bytes | None = field(default=None, repr=False)
    allow_reload: bool = False
    model_root: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_root is not None:
            object.__setattr__(self, "model_root", Path(self.model_root))
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        for name in ("workers", "max_message_bytes", "max_prompt_chars", "batch_chunk", "max_batch", "max_concurrent_rpcs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.observe and self.decision_log is None:
            raise ConfigError("observation mode needs a decision log path (--decision-log)")
        if self.log_prompts and self.decision_log is None:
            raise ConfigError("--log-prompts needs a decision log path (--decision-log)")
        if self.admin_token is not None and len(self.admin_token) < MIN_SECRET_BYTES:
            raise ConfigError(f"admin_token must be at least {MIN_SECRET_BYTES} bytes, got {len(self.admin_token)}")

    @property
    def reload_root(self) -> Path | None:
        """The directory a Reload RPC may name models under: `model_root`, else the parent of
        `model_dir` (where a deploy puts its versions beside a `current` link)."""
        if self.model_root is not None:
            return self.model_root
        return self.model_dir.parent if self.model_dir is not None else None
