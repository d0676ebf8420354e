"""The price file's format (`router_model/prices.json`, and a user's `--prices` file): reading it and
checking its shape, every problem named by file and key. Turning its entries into prices is
router_model/cost.py's `PriceTable`.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from router_model.errors import ConfigError

PACKAGED_FILE = "router_model/prices.json"
CURRENCY = "USD"
UNIT = "per 1M tokens"
_TOP_KEYS = frozenset({"version", "as_of", "source", "currency", "unit", "notes", "models", "aliases"})
_PROVENANCE_KEYS = frozenset({"as_of", "source"})  # per-model date and source of a price (strings, not used in arithmetic)
_MODEL_KEYS = frozenset({"input", "output", "cached_input", "cache_write_input", "context_window"}) | _PROVENANCE_KEYS
SUPPORTED_VERSION = 1


class PriceFileError(ConfigError):
    """A price file is unreadable or holds an unusable value: `file` and `key` say where."""

    def __init__(self, message: str, *, file: str, key: str | None = None) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.reason = message


def amount_problem(value: Any) -> str | None:
    """Why `value` is not a usable price, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a non-negative number, got {value!r}"
    if not math.isfinite(value) or value < 0:
        return f"expected a finite non-negative number, got {value!r}"
    return None


def context_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return None
    return f"expected a positive integer or null, got {value!r}"


def packaged_text() -> str:
    """The packaged prices.json, via importlib.resources so it works from a wheel or zip too."""
    try:
        return resources.files("router_model").joinpath("prices.json").read_text(encoding="utf-8")
    except (OSError, TypeError, ValueError):
        # importlib.resources cannot read a namespace package found through a relative sys.path
        # entry (no __init__.py, run from the source tree); the file sits next to this module.
        return Path(__file__).with_name("prices.json").read_text(encoding="utf-8")


def normalize_model_name(name: str) -> str:
    return name.strip().lower()


def parse_price_file(text: str, label: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
    """Parse one price file into (metadata, raw model fields, aliases), checking its shape."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceFileError(f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}", file=label) from None
    if not isinstance(data, dict):
        raise PriceFileError(f"expected a JSON object, got {type(data).__name__}", file=label)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PriceFileError(f"unknown key(s) {unknown}; expected some of {sorted(_TOP_KEYS)}", file=label)
    meta: dict[str, Any] = {}
    if "version" in data:
        if data["version"] != SUPPORTED_VERSION or isinstance(data["version"], bool):
            raise PriceFileError(
                f"unsupported version {data['version']!r}; this code reads version {SUPPORTED_VERSION}",
                file=label, key="version",
            )
        meta["version"] = SUPPORTED_VERSION
    for key in ("as_of", "source", "currency", "unit"):
        if key in data:
            if not isinstance(data[key], str):
                raise PriceFileError(f"expected a string, got {data[key]!r}", file=label, key=key)
            meta[key] = data[key]
    if meta.get("currency", CURRENCY) != CURRENCY:
        raise PriceFileError(f"only {CURRENCY} is supported, got {meta['currency']!r}", file=label, key="currency")
    if meta.get("unit", UNIT) != UNIT:
        raise PriceFileError(f"prices must be {UNIT!r}, got {meta['unit']!r}", file=label, key="unit")
    raw_models = data.get("models", {})
    if not isinstance(raw_models, dict):
        raise PriceFileError("expected an object of model name -> prices", file=label, key="models")
    models: dict[str, dict[str, Any]] = {}
    for name, fields in raw_models.items():
        key = f"models.{name}"
        if not name.strip():
            raise PriceFileError("empty model name", file=label, key=key)
        if not isinstance(fields, dict):
            raise PriceFileError(f"expected an object of prices, got {fields!r}", file=label, key=key)
        bad = sorted(set(fields) - _MODEL_KEYS)
        if bad:
            raise PriceFileError(f"unknown field(s) {bad}; expected some of {sorted(_MODEL_KEYS)}", file=label, key=key)
        for field_name, value in fields.items():
            if field_name in _PROVENANCE_KEYS:
                if not isinstance(value, str):
                    raise PriceFileError(f"expected a string, got {value!r}", file=label, key=f"{key}.{field_name}")
                continue
            problem = context_problem(value) if field_name == "context_window" else amount_problem(value)
            if problem:
                raise PriceFileError(problem, file=label, key=f"{key}.{field_name}")
        models[normalize_model_name(name)] = dict(fields)
    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, dict):
        raise PriceFileError("expected an object of alias -> model name", file=label, key="aliases")
    aliases: dict[str, str] = {}
    for alias, target in raw_aliases.items():
        if not isinstance(target, str) or not target.strip() or not alias.strip():
            raise PriceFileError(f"expected a model name, got {target!r}", file=label, key=f"aliases.{alias}")
        if normalize_model_name(alias) in models:
            raise PriceFileError("is both a priced model and an alias in this file", file=label, key=f"aliases.{alias}")
        aliases[normalize_model_name(alias)] = normalize_model_name(target)
    return meta, models, aliases
