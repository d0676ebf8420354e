"""What a request costs on each model, and what routing saves.

Prices live in a versioned JSON table (`router_model/prices.json`) rather than in code, so a
price change is a data change with a date and a source. A user file can override or extend it.
All prices are USD per 1M tokens; all results are dollars. The arithmetic is plain float
(scalars or numpy arrays): token totals are formed first and divided by 1M last, which keeps
round figures (1M calls x 500 tokens x $2.50) exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from router_model.errors import ConfigError

Number = float | int | np.ndarray

TOKENS_PER_UNIT = 1_000_000
DEFAULT_OUTPUT_TOKENS = 250  # assumed output tokens per request where a log has none
DEFAULT_CHEAP = "gpt-4o-mini"
DEFAULT_STRONG = "gpt-4o"
PACKAGED_FILE = "router_model/prices.json"
_CURRENCY = "USD"
_UNIT = "per 1M tokens"
_TOP_KEYS = frozenset({"version", "as_of", "source", "currency", "unit", "notes", "models", "aliases"})
_PROVENANCE_KEYS = frozenset({"as_of", "source"})  # per-model date and source of a price (strings, not used in arithmetic)
_MODEL_KEYS = frozenset({"input", "output", "cached_input", "cache_write_input", "context_window"}) | _PROVENANCE_KEYS
_SUPPORTED_VERSION = 1


class PriceFileError(ConfigError):
    """A price file is unreadable or holds an unusable value: `file` and `key` say where."""

    def __init__(self, message: str, *, file: str, key: str | None = None) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.reason = message


class UnknownModelError(ConfigError):
    """A model name is neither priced nor an alias; `known` lists what is."""

    def __init__(self, model: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"no price for model {model!r}; known models: {', '.join(known)}. Price it in a file passed with "
            f"--prices, or map it to a priced model with --price-as '{model}=gpt-4o' (or =gpt-4o-mini)"
        )
        self.model = model
        self.known = known


def _amount_problem(value: Any) -> str | None:
    """Why `value` is not a usable price, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a non-negative number, got {value!r}"
    if not math.isfinite(value) or value < 0:
        return f"expected a finite non-negative number, got {value!r}"
    return None


def _context_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return None
    return f"expected a positive integer or null, got {value!r}"


@dataclass(frozen=True)
class ModelPrice:
    """One model's list prices in USD per 1M tokens; `cached_input` bills prompt-cache hits,
    `cache_write_input` prompt-cache writes (Anthropic's `cache_creation_input_tokens`; None: `input`)."""

    input: float
    output: float
    cached_input: float
    context_window: int | None = None
    cache_write_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            problem = _amount_problem(getattr(self, name))
            if problem:
                raise ConfigError(f"{name}: {problem}")
            object.__setattr__(self, name, float(getattr(self, name)))
        problem = _context_problem(self.context_window)
        if problem:
            raise ConfigError(f"context_window: {problem}")
        if self.cache_write_input is not None:
            problem = _amount_problem(self.cache_write_input)
            if problem:
                raise ConfigError(f"cache_write_input: {problem}")
            object.__setattr__(self, "cache_write_input", float(self.cache_write_input))


@dataclass(frozen=True)
class PairPricing:
    """Prices for a cheap/strong pair."""

    cheap_model: str
    strong_model: str
    cheap: ModelPrice
    strong: ModelPrice


@dataclass(frozen=True)
class PriceTable:
    """Model prices plus aliases (dated snapshot names -> priced model); names are lower-case."""

    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str] = field(default_factory=dict)
    version: int = _SUPPORTED_VERSION
    as_of: str = ""
    source: str = ""
    currency: str = _CURRENCY
    unit: str = _UNIT
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        models = {normalize_model_name(k): v for k, v in self.models.items()}
        aliases = {normalize_model_name(k): normalize_model_name(v) for k, v in self.aliases.items()}
        for name, price in models.items():
            if not name:
                raise ConfigError("a model name is empty")
            if not isinstance(price, ModelPrice):
                raise ConfigError(f"models[{name!r}] must be a ModelPrice, got {type(price).__name__}")
        for alias, target in aliases.items():
            if alias in models:
                raise ConfigError(f"alias {alias!r} is also a priced model; drop one of the two")
            if target not in models:
                raise ConfigError(f"alias {alias!r} points to {target!r}, which has no price")
        if self.currency != _CURRENCY or self.unit != _UNIT:
            raise ConfigError(f"prices must be {_CURRENCY} {_UNIT}, got {self.currency} {self.unit}")
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "aliases", MappingProxyType(aliases))

    def with_price_as(self, price_as: Mapping[str, str]) -> PriceTable:
        """The table with `price_as` {unpriced name: priced model} added as aliases (an explicit mapping
        the user gave, e.g. a public model priced as its GPT-4o-class stand-in)."""
        if not price_as:
            return self
        aliases = dict(self.aliases)
        for name, target in price_as.items():
            if normalize_model_name(name) in self.models:
                raise ConfigError(f"--price-as {name}={target}: {name!r} already has a price of its own")
            if normalize_model_name(target) not in self.models and normalize_model_name(target) not in self.aliases:
                raise UnknownModelError(target, self.known_models())
            aliases[normalize_model_name(name)] = self.resolve(target)
        return dataclasses.replace(self, aliases=aliases)

    @classmethod
    def load(cls, path: str | Path | None = None, *, price_as: Mapping[str, str] | None = None) -> PriceTable:
        """The packaged table, overridden/extended field by field by the file at `path` if given.

        A user file has the same layout; it may hold only `models` and/or `aliases`. Fields of a
        model already priced replace the packaged ones; a new model needs `input` and `output`
        (`cached_input` defaults to `input`, i.e. no cache discount).
        """
        meta, raw_models, raw_aliases = _parse(_packaged_text(), PACKAGED_FILE)
        files = [PACKAGED_FILE]
        alias_file = dict.fromkeys(raw_aliases, PACKAGED_FILE)
        if path is not None:
            label = str(path)
            try:
                user_text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PriceFileError(f"cannot read price file: {exc}", file=label) from None
            user_meta, user_models, user_aliases = _parse(user_text, label)
            for name, fields in user_models.items():
                raw_models[name] = {**raw_models.get(name, {}), **fields}
            raw_aliases.update(user_aliases)
            alias_file.update(dict.fromkeys(user_aliases, label))
            for name in user_models:
                raw_aliases.pop(name, None)  # a user price beats a packaged alias of that name
            meta.update(user_meta)
            files.append(label)
        label = " + ".join(files)
        models: dict[str, ModelPrice] = {}
        for name, fields in raw_models.items():
            for key in ("input", "output"):
                if key not in fields:  # only a model new in the user file can lack one
                    raise PriceFileError(f"missing required field {key!r}", file=files[-1], key=f"models.{name}")
            models[name] = ModelPrice(
                input=fields["input"],
                output=fields["output"],
                cached_input=fields.get("cached_input", fields["input"]),
                context_window=fields.get("context_window"),
                cache_write_input=fields.get("cache_write_input"),
            )
        for alias, target in raw_aliases.items():
            if target not in models:
                raise PriceFileError(
                    f"points to {target!r}, which has no price", file=alias_file[alias], key=f"aliases.{alias}"
                )
        try:
            table = cls(models=models, aliases=raw_aliases, files=tuple(files), **meta)
        except ConfigError as exc:
            raise PriceFileError(str(exc), file=label) from None
        return table.with_price_as(price_as or {})

    def known_models(self) -> tuple[str, ...]:
        """Priced model names, sorted (aliases not included)."""
        return tuple(sorted(self.models))

    def resolve(self, model: str) -> str:
        """The priced name for `model` (itself or its alias target); UnknownModelError if neither."""
        name = normalize_model_name(model)
        if name in self.models:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise UnknownModelError(model, self.known_models())

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and (normalize_model_name(model) in self.models or normalize_model_name(model) in self.aliases)

    def price(self, model: str) -> ModelPrice:
        """The price of `model`, resolving aliases; UnknownModelError (a ConfigError) if unpriced."""
        return self.models[self.resolve(model)]

    def pricing_for_pair(self, cheap: str, strong: str) -> PairPricing:
        """Prices for a cheap/strong pair; an unpriced name is an UnknownModelError naming the fix
        (a --prices file, or an explicit --price-as mapping), so a cost figure is never silently
        built on someone else's price."""
        return PairPricing(cheap, strong, self.price(cheap), self.price(strong))


def parse_price_as(text: str) -> tuple[str, str]:
    """`NAME=PRICED` (the command-line form of a price mapping)."""
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise ValueError(f"expected NAME=PRICED_MODEL (e.g. my-model=gpt-4o-mini), got {text!r}")
    return name.strip(), target.strip()


def _packaged_text() -> str:
    """The packaged prices.json, via importlib.resources so it works from a wheel or zip too."""
    try:
        return resources.files("router_model").joinpath("prices.json").read_text(encoding="utf-8")
    except (OSError, TypeError, ValueError):
        # importlib.resources cannot read a namespace package found through a relative sys.path
        # entry (no __init__.py, run from the source tree); the file sits next to this module.
        return Path(__file__).with_name("prices.json").read_text(encoding="utf-8")


def normalize_model_name(name: str) -> str:
    return name.strip().lower()


def _parse(text: str, label: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
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
        if data["version"] != _SUPPORTED_VERSION or isinstance(data["version"], bool):
            raise PriceFileError(
                f"unsupported version {data['version']!r}; this code reads version {_SUPPORTED_VERSION}",
                file=label, key="version",
            )
        meta["version"] = _SUPPORTED_VERSION
    for key in ("as_of", "source", "currency", "unit"):
        if key in data:
            if not isinstance(data[key], str):
                raise PriceFileError(f"expected a string, got {data[key]!r}", file=label, key=key)
            meta[key] = data[key]
    if meta.get("currency", _CURRENCY) != _CURRENCY:
        raise PriceFileError(f"only {_CURRENCY} is supported, got {meta['currency']!r}", file=label, key="currency")
    if meta.get("unit", _UNIT) != _UNIT:
        raise PriceFileError(f"prices must be {_UNIT!r}, got {meta['unit']!r}", file=label, key="unit")
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
            problem = _context_problem(value) if field_name == "context_window" else _amount_problem(value)
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


# ---------------------------------------------------------------- arithmetic


def check_non_negative(value: Number, what: str) -> None:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"{what} must be finite and non-negative, got {value!r}")


def check_share(value: Number, what: str) -> None:
    arr = np.asarray(value, dtype=float)
    if not np.all((arr >= 0) & (arr <= 1)):  # also rejects NaN
        raise ConfigError(f"{what} must be within [0, 1], got {value!r}")


def token_cost(price: ModelPrice, input_tokens: Number, output_tokens: Number, cached_share: Number) -> Number:
    """Dollars for token totals: totals times $/1M, divided by 1M last to keep round figures exact."""
    cached = input_tokens * cached_share
    uncached = input_tokens - cached
    return (uncached * price.input + cached * price.cached_input + output_tokens * price.output) / TOKENS_PER_UNIT


def request_cost(price: ModelPrice, input_tokens: Number, output_tokens: Number, cached_share: Number = 0.0) -> Number:
    """Dollars for one request (or elementwise for arrays); `cached_share` of input hits the cache."""
    check_non_negative(input_tokens, "input_tokens")
    check_non_negative(output_tokens, "output_tokens")
    check_share(cached_share, "cached_share")
    return token_cost(price, input_tokens, output_tokens, cached_share)


# ------------------------------------------------------------------ an answer's usage, in dollars


def _token_count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer; `cached_tokens` is the part of `prompt_tokens` billed at the cached price,
    `cache_write_tokens` the part written to the prompt cache (Anthropic; billed at the cache-write price)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage | None:
        """Read an Anthropic Messages `usage` object; None when there is none. Its `input_tokens`
        exclude the cache reads and writes, which are added here to make `prompt_tokens` the whole input."""
        if not isinstance(usage, Mapping):
            return None
        fresh = _token_count(usage.get("input_tokens"))
        read = _token_count(usage.get("cache_read_input_tokens"))
        write = _token_count(usage.get("cache_creation_input_tokens"))
        return cls(fresh + read + write, _token_count(usage.get("output_tokens")), read, write)

    @classmethod
    def from_response(cls, usage: Any) -> Usage | None:
        """Read an OpenAI chat-completion `usage` object; None when there is none."""
        return cls._openai(usage, "prompt_tokens", "completion_tokens", "prompt_tokens_details")

    @classmethod
    def from_responses_usage(cls, usage: Any) -> Usage | None:
        """Read the Responses API's `usage` (`input_tokens`, `output_tokens`,
        `input_tokens_details.cached_tokens`); None when there is none."""
        return cls._openai(usage, "input_tokens", "output_tokens", "input_tokens_details")

    @classmethod
    def _openai(cls, usage: Any, prompt_key: str, completion_key: str, details_key: str) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        details = usage.get(details_key)
        prompt = _token_count(usage.get(prompt_key))
        cached = _token_count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        return cls(prompt, _token_count(usage.get(completion_key)), min(cached, prompt))

    def to_dict(self) -> dict[str, int]:
        out = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            out["cache_write_tokens"] = self.cache_write_tokens
        return out


def usage_cost(prices: PriceTable, model: str, usage: Usage) -> float | None:
    """USD for `usage` on `model`: uncached input, cached input (cache reads), cache writes and output
    at their prices (a cache write at `cache_write_input`, else the input price); None if unpriced."""
    if model not in prices:
        return None
    p = prices.price(model)
    written = usage.cache_write_tokens
    uncached = usage.prompt_tokens - usage.cached_tokens - written
    write_price = p.cache_write_input if p.cache_write_input is not None else p.input
    return (uncached * p.input + usage.cached_tokens * p.cached_input + written * write_price
            + usage.completion_tokens * p.output) / TOKENS_PER_UNIT
