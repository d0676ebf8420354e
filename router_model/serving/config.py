"""ServingConfig: the settings every front door shares, validated once.

`ServerConfig` (gRPC) and `GatewayConfig` (HTTP) extend it with their own; where a default
differs (port, grace period) the subclass says so next to its field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from router_model.batching import BatchingConfig
from router_model.errors import ConfigError
from router_model.registry import ModelUri
from router_model.settings import DEFAULT_HOST, GRAPHS

# A shorter admin token or prompt-hash key is too easy to guess.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, kw_only=True)
class ServingConfig:
    """Which model to serve and how; how decisions are recorded.

    The model is `model_dir`, or a registered version `model_uri` (models:/NAME@ALIAS) whose alias
    is polled every `follow` seconds. `watch_interval` polls a model directory's metadata.json.
    `graph` picks int8 or fp32 (None: the artifact's default); `threads` is onnxruntime's intra-op
    thread count per session. `decision_log` appends every decision; `log_prompts` adds the
    prompt; `prompt_hash_key` keys the prompt's HMAC (none is written without it). `batching`
    shares graph runs between concurrent decisions. Secrets are kept out of repr.
    """

    model_dir: Path | None = None
    model_uri: str | None = None
    follow: float | None = None
    tracking_uri: str | None = None
    graph: str | None = None
    threads: int | None = 1
    watch_interval: float | None = None
    decision_log: Path | None = None
    log_prompts: bool = False
    prompt_hash_key: bytes | None = field(default=None, repr=False)
    batching: BatchingConfig | None = None
    host: str = DEFAULT_HOST
    port: int = 0
    grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in ("model_dir", "decision_log"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or None, got {self.threads}")
        if self.model_uri is not None:
            ModelUri.parse(self.model_uri)
            if self.model_dir is not None:
                raise ConfigError("name either a model directory or a model URI (--model-uri), not both")
        if self.follow is not None and (self.model_uri is None or not self.follow > 0):
            raise ConfigError(f"follow needs a model URI and a positive number of seconds, got {self.follow}")
        if self.watch_interval is not None and not self.watch_interval > 0:
            raise ConfigError(f"watch_interval must be positive or None, got {self.watch_interval}")
        if not (math.isfinite(self.grace_seconds) and self.grace_seconds >= 0):
            raise ConfigError(f"grace_seconds must not be negative, got {self.grace_seconds}")
        if self.graph is not None and self.graph not in GRAPHS:
            raise ConfigError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        if self.prompt_hash_key is not None and len(self.prompt_hash_key) < MIN_SECRET_BYTES:
            raise ConfigError(f"prompt_hash_key must be at least {MIN_SECRET_BYTES} bytes, got {len(self.prompt_hash_key)}")
