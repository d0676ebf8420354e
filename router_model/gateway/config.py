"""The gateway's settings: frozen dataclasses, read from a JSON or TOML file checked by a JSON Schema.

Command-line options override the file. API keys are never stored in the file: an upstream
names the environment variable that holds its key (`api_key_env`), which must be set when the
gateway starts and is read again for every request.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router_model.answer_checks import DEFAULT_REFUSAL_PATTERNS, Checks  # noqa: F401 - part of the gateway's config
from router_model.batching import BatchingConfig
from router_model.gateway.errors import GatewayConfigError
from router_model.labelling.config import SHADOW_SCHEMA, ShadowConfig, shadow_config
from router_model.serving.config import ServingConfig
from router_model.settings import GRAPHS

MODES = ("observe", "route")
AFFINITY_MODES = ("session", "tool-loop", "off")

_UPSTREAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base_url"],
    "properties": {
        "base_url": {"type": "string", "pattern": "^https?://"},
        "api_key_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model_dir": {"type": "string", "minLength": 1},
        "model_uri": {"type": "string", "pattern": "^models:/"},
        "follow": {"type": "number", "exclusiveMinimum": 0},
        "mode": {"enum": list(MODES)},
        "upstream": _UPSTREAM_SCHEMA,
        "models": {"type": "object", "additionalProperties": _UPSTREAM_SCHEMA},
        "aliases": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
        # N-model routers: a routable model name -> the candidate models the router chooses among.
        "routes": {
            "type": "object",
            "additionalProperties": {
                "type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True,
            },
        },
        "fallback_to_strong": {"type": "boolean"},
        # Anthropic Messages API (POST /v1/messages): the default Anthropic-compatible upstream.
        "anthropic": _UPSTREAM_SCHEMA,
        # Conversations keep their model (router_model/gateway/affinity.py; docs/gateway.md).
        "affinity": {"enum": list(AFFINITY_MODES)},
        "affinity_ttl_seconds": {"type": "number", "exclusiveMinimum": 0},
        "affinity_max_entries": {"type": "integer", "minimum": 1},
        "affinity_session_field": {"type": "string", "minLength": 1},
        "decision_log": {"type": "string", "minLength": 1},
        "log_prompts": {"type": "boolean"},
        "watch_interval": {"type": "number", "exclusiveMinimum": 0},
        "prices": {"type": "string", "minLength": 1},
        "graph": {"enum": list(GRAPHS)},
        "threads": {"type": "integer", "minimum": 1},
        "max_body_bytes": {"type": "integer", "minimum": 1024},
        "max_response_bytes": {"type": "integer", "minimum": 1024},
        "max_connections": {"type": "integer", "minimum": 1},
        "host": {"type": "string", "minLength": 1},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "grace_seconds": {"type": "number", "minimum": 0},
        "timeouts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: {"type": "number", "exclusiveMinimum": 0}
                for k in ("connect", "read", "write", "pool", "total", "readiness")
            },
        },
        "shadow": SHADOW_SCHEMA,
        "batching": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_delay_ms": {"type": "number", "minimum": 0, "maximum": 1000},
                "max_size": {"type": "integer", "minimum": 1},
                "runners": {"type": "integer", "minimum": 1},
            },
        },
        "checks": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **{k: {"type": "boolean"} for k in ("json", "json_schema", "length", "empty", "refusal", "tool_arguments")},
                "refusal_patterns": {"type": "array", "items": {"type": "string"}},
                # The artifact's learned answer score (issue 26); false turns it off even when the artifact has it on.
                "answer_score": {"type": "boolean"},
                # Streams too: a cheap stream is read ahead and scored before it is sent (off by default).
                "buffer_streams": {"type": "boolean"},
            },
        },
    },
}


@dataclass(frozen=True)
class Upstream:
    """An OpenAI-compatible base URL (ending in /v1, like the SDK's base_url) and where its key is."""

    base_url: str
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise GatewayConfigError(f"expected an http(s) URL, got {self.base_url!r}", key="base_url")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def api_key(self) -> str | None:
        """The key from the environment (read per request, so a rotated key is picked up)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True)
class Timeouts:
    """Seconds, for each upstream call: `connect` to open a connection, `write` for each piece of the
    request sent, `pool` to wait for a free pooled connection, `read` for each piece of the answer
    (the gap between two reads, not the whole answer). `total` bounds a non-streamed request as a
    whole, from its arrival to the last byte of the upstream's answer, fallback and escalation
    included (a stream has no total: it may run as long as its pieces keep coming). `readiness`
    bounds /readyz's probe of the upstream."""

    connect: float = 5.0
    read: float = 120.0
    write: float = 30.0
    pool: float = 10.0
    readiness: float = 2.0
    total: float = 600.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool", "readiness", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise GatewayConfigError(f"expected a positive number of seconds, got {value!r}", key=f"timeouts.{name}")
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True, kw_only=True)
class GatewayConfig(ServingConfig):
    """Everything the gateway needs; build with `load_config` or directly (tests).

    The model, its reloads, batching and the decision log are the shared `ServingConfig`'s fields.
    """

    upstream: Upstream
    models: Mapping[str, Upstream] = field(default_factory=dict)
    aliases: frozenset[str] = frozenset({"auto"})
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # routable name -> candidate models (N-model)
    mode: str = "observe"
    fallback_to_strong: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    checks: Checks = field(default_factory=Checks)
    answer_score: bool = True  # escalate on the artifact's answer score when it has one (`checks.answer_score`)
    # Route mode: read a cheap model's stream ahead (at most 4 MiB), score it, and escalate it as a
    # non-streamed answer is (`checks.buffer_streams`, --buffer-streams); off: streams are relayed as they come.
    buffer_streams: bool = False
    prices: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024  # a larger non-streamed upstream answer: 502 (streams are not held to it)
    max_connections: int = 256
    port: int = 8080
    grace_seconds: float = 30.0
    shadow: ShadowConfig | None = None  # shadow grading: off unless configured (docs/labelling.md)
    anthropic: Upstream | None = None  # POST /v1/messages: the default Anthropic-compatible upstream
    affinity: str = "tool-loop"  # "session" | "tool-loop" | "off" (router_model/gateway/affinity.py)
    affinity_ttl_seconds: float = 3600.0
    affinity_max_entries: int = 100_000
    affinity_session_field: str = "user,metadata.user_id"  # body fields (dotted, comma-separated) after x-router-session

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise GatewayConfigError(f"expected one of {list(MODES)}, got {self.mode!r}", key="mode")
        if self.affinity not in AFFINITY_MODES:
            raise GatewayConfigError(f"expected one of {list(AFFINITY_MODES)}, got {self.affinity!r}", key="affinity")
        ttl = self.affinity_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            raise GatewayConfigError(f"expected a positive number of seconds, got {ttl!r}", key="affinity_ttl_seconds")
        cap = self.affinity_max_entries
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise GatewayConfigError(f"expected a positive whole number, got {cap!r}", key="affinity_max_entries")
        if self.prices is not None:
            object.__setattr__(self, "prices", Path(self.prices))
        for name in ("max_body_bytes", "max_response_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise GatewayConfigError(f"expected a whole number of bytes of at least 1024, got {value!r}", key=name)
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "aliases", frozenset(a.strip() for a in self.aliases))
        object.__setattr__(self, "routes", MappingProxyType({k.strip(): tuple(v) for k, v in self.routes.items()}))
        for name, cands in self.routes.items():
            if not cands:
                raise GatewayConfigError("needs at least one candidate model", key=f"routes.{name}")
        extra = (("anthropic", self.anthropic),) if self.anthropic is not None else ()
        for key, up in (("upstream", self.upstream), *extra, *((f"models.{m}", u) for m, u in self.models.items())):
            if up.api_key_env and up.api_key_env not in os.environ:
                raise GatewayConfigError(
                    f"names the environment variable {up.api_key_env!r}, which is not set", key=f"{key}.api_key_env"
                )

    def upstream_for(self, model: str) -> Upstream:
        """The upstream serving `model`: its own entry under `models`, else the default one."""
        return self.models.get(model, self.upstream)

    def anthropic_upstream_for(self, model: str) -> Upstream:
        """The Anthropic-compatible upstream serving `model` on /v1/messages: its own entry under
        `models`, else `anthropic`, else the default upstream."""
        return self.models.get(model) or self.anthropic or self.upstream


def _read_file(path: Path) -> dict[str, Any]:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayConfigError(f"cannot read the config file: {exc}", file=label) from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"not valid TOML: {exc}", file=label) from None
    except json.JSONDecodeError as exc:
        raise GatewayConfigError(f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}", file=label) from None
    validate_document(data, file=label)
    return dict(data)


def validate_document(data: Any, *, file: str | None = None) -> None:
    """Check a parsed config document against CONFIG_SCHEMA; raise naming the first bad key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(CONFIG_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or None
        raise GatewayConfigError(err.message, key=key, file=file)


def _upstream(raw: Mapping[str, Any]) -> Upstream:
    return Upstream(base_url=raw["base_url"], api_key_env=raw.get("api_key_env"))


def load_config(path: str | Path | None = None, **overrides: Any) -> GatewayConfig:
    """Read the config file (JSON, or TOML when it ends in .toml) and apply `overrides`.

    Overrides are GatewayConfig fields (None values are ignored), plus `upstream_url` to replace
    the default upstream's base URL. Relative paths are relative to the working directory.
    """
    data = _read_file(Path(path)) if path is not None else {}
    upstream_url = overrides.pop("upstream_url", None)
    raw_upstream = dict(data.get("upstream") or {})
    if upstream_url:
        raw_upstream["base_url"] = upstream_url
    if "base_url" not in raw_upstream:
        raise GatewayConfigError("no upstream: pass --upstream URL or set upstream.base_url in the config file", key="upstream")
    kwargs: dict[str, Any] = {"upstream": _upstream(raw_upstream)}
    if "models" in data:
        kwargs["models"] = {name: _upstream(raw) for name, raw in data["models"].items()}
    if "aliases" in data:
        kwargs["aliases"] = frozenset(data["aliases"])
    if "routes" in data:
        kwargs["routes"] = {name: tuple(models) for name, models in data["routes"].items()}
    if "timeouts" in data:
        kwargs["timeouts"] = Timeouts(**data["timeouts"])
    if "batching" in data:
        kwargs["batching"] = BatchingConfig(**data["batching"])
    if "checks" in data:
        checks = dict(data["checks"])
        for key in ("answer_score", "buffer_streams"):
            if key in checks:
                kwargs[key] = checks.pop(key)
        if "refusal_patterns" in checks:
            checks["refusal_patterns"] = tuple(checks["refusal_patterns"])
        kwargs["checks"] = Checks(**checks)
    if "shadow" in data:
        kwargs["shadow"] = shadow_config(data["shadow"])
    if "anthropic" in data:
        kwargs["anthropic"] = _upstream(data["anthropic"])
    for key in ("model_dir", "decision_log", "prices"):
        if key in data:
            kwargs[key] = Path(data[key])
    for key in (
        "mode", "fallback_to_strong", "log_prompts", "watch_interval", "graph", "threads", "model_uri", "follow",
        "max_body_bytes", "max_response_bytes", "max_connections", "host", "port", "grace_seconds",
        "affinity", "affinity_ttl_seconds", "affinity_max_entries", "affinity_session_field",
    ):
        if key in data:
            kwargs[key] = data[key]
    config = GatewayConfig(**kwargs)
    clean = {k: v for k, v in overrides.items() if v is not None}
    for key in ("model_dir", "decision_log", "prices"):
        if key in clean:
            clean[key] = Path(clean[key])
    return replace(config, **clean) if clean else config
