"""ServerConfig: everything `create_server` needs, checked once when it is built.

Free of gRPC imports so that `router-serve --help` and config errors need no server machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from router_model.errors import ConfigError
from router_model.settings import DEFAULT_HOST, GRAPHS


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_server` needs; `router-serve` builds one from flags and env vars.

    `workers` is the gRPC handler thread count and `threads` onnxruntime's intra-op thread count
    per session (None = Router.load's default); see docs/service.md for the choice on 2 cores.
    `model_dir` may be None: the server then starts NOT_SERVING until a Reload names one.
    `watch_interval` (seconds) polls the model directory's metadata.json and reloads on change.
    `host` is also where the metrics HTTP server binds.
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

    def __post_init__(self) -> None:
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.decision_log is not None:
            object.__setattr__(self, "decision_log", Path(self.decision_log))
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")
        for name in ("workers", "max_message_bytes", "max_prompt_chars", "batch_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or None, got {self.threads}")
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
