"""What a request costs on each model, and what routing saves.

Prices come from data, not code: by default pydantic's maintained `genai-prices` package
(offline, snapshot-aware; `router_model.price_source`), then the packaged, dated table
(`router_model/prices.json`) for names it lacks. A user file (`--prices`) overrides or extends
both, and an explicit `--price-as NAME=PRICED` mapping prices NAME as PRICED (PriceTable says
the order). Every resolved price says where it came from (`PriceTable.source_of`).
All prices are USD per 1M tokens. The dollars of a request or of an upstream's `usage` are
router_model/dollars.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from router_model.errors import ConfigError
from router_model.price_file import (
    CURRENCY,
    PACKAGED_FILE,
    SUPPORTED_VERSION,
    UNIT,
    PriceFileError,
    amount_problem,
    context_problem,
    normalize_model_name,
    packaged_text,
    parse_price_file,
)
from router_model.price_source import GenaiPrices, MaintainedEntry, load_genai_prices

Number = float | int | np.ndarray

TOKENS_PER_UNIT = 1_000_000
DEFAULT_OUTPUT_TOKENS = 250  # assumed output tokens per request where a log has none
DEFAULT_CHEAP = "gpt-4o-mini"
DEFAULT_STRONG = "gpt-4o"
_LIST_ALL = 30  # an unknown-model error lists every known name up to this many, else the closest


class UnknownModelError(ConfigError):
    """A model name is neither priced nor mapped; `known` holds what is priced (it can be thousands
    of names with genai-prices, so the message names only the closest few and the count)."""

    def __init__(self, model: str, known: tuple[str, ...]) -> None:
        if len(known) <= _LIST_ALL:
            hint = f"known models: {', '.join(known)}"
        else:
            close = difflib.get_close_matches(normalize_model_name(model), known, n=5, cutoff=0.6)
            hint = (f"closest of {len(known):,} known models: {', '.join(close)}" if close
                    else f"none of the {len(known):,} known models is close")
        super().__init__(
            f"no price for model {model!r}; {hint}. Price it in a file passed with "
            f"--prices, or map it to a priced model with --price-as '{model}=gpt-4o' (or =gpt-4o-mini)"
        )
        self.model = model
        self.known = known


def _check_amounts(obj: Any, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Validate and float-convert price fields of a frozen dataclass in place."""
    for name in (*names, *optional):
        value = getattr(obj, name)
        if value is None and name in optional:
            continue
        problem = amount_problem(value)
        if problem:
            raise ConfigError(f"{name}: {problem}")
        object.__setattr__(obj, name, float(value))


@dataclass(frozen=True)
class PriceTier:
    """Long-context prices: a request whose own input tokens exceed `above_input_tokens` pays these on
    all its tokens (the provider's "cliff": 250K tokens at the tier price, 100K at the base price)."""

    above_input_tokens: int
    input: float
    output: float
    cached_input: float
    cache_write_input: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.above_input_tokens, bool) or not isinstance(self.above_input_tokens, int) \
                or self.above_input_tokens <= 0:
            raise ConfigError(f"above_input_tokens: expected a positive integer, got {self.above_input_tokens!r}")
        _check_amounts(self, ("input", "output", "cached_input"), ("cache_write_input",))


@dataclass(frozen=True)
class ModelPrice:
    """One model's list prices in USD per 1M tokens; `cached_input` bills prompt-cache hits,
    `cache_write_input` prompt-cache writes (Anthropic's `cache_creation_input_tokens`; None: `input`).
    `tiers` (ascending thresholds) replace all four for a request with more input tokens than a
    tier's threshold; the arithmetic below applies them per request, never to a monthly total."""

    input: float
    output: float
    cached_input: float
    context_window: int | None = None
    cache_write_input: float | None = None
    tiers: tuple[PriceTier, ...] = ()

    def __post_init__(self) -> None:
        _check_amounts(self, ("input", "output", "cached_input"), ("cache_write_input",))
        problem = context_problem(self.context_window)
        if problem:
            raise ConfigError(f"context_window: {problem}")
        tiers = tuple(sorted(self.tiers, key=lambda t: t.above_input_tokens))
        if any(not isinstance(t, PriceTier) for t in tiers):
            raise ConfigError("tiers must be PriceTier values")
        if len({t.above_input_tokens for t in tiers}) != len(tiers):
            raise ConfigError("tiers: two tiers share a threshold")
        object.__setattr__(self, "tiers", tiers)

    def at(self, input_tokens: float) -> ModelPrice:
        """The flat prices one request of `input_tokens` input tokens pays (its tier, if any)."""
        chosen = None
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                chosen = tier
        if chosen is None:
            return self if not self.tiers else dataclasses.replace(self, tiers=())
        return ModelPrice(chosen.input, chosen.output, chosen.cached_input, self.context_window,
                          chosen.cache_write_input)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON fields (as a price file spells them, plus `tiers`)."""
        out: dict[str, Any] = {"input": self.input, "output": self.output, "cached_input": self.cached_input}
        if self.cache_write_input is not None:
            out["cache_write_input"] = self.cache_write_input
        if self.context_window is not None:
            out["context_window"] = self.context_window
        if self.tiers:
            out["tiers"] = [dataclasses.asdict(t) for t in self.tiers]
        return out


@dataclass(frozen=True)
class PairPricing:
    """Prices for a cheap/strong pair."""

    cheap_model: str
    strong_model: str
    cheap: ModelPrice
    strong: ModelPrice


@dataclass(frozen=True)
class ResolvedPrice:
    """A model's price and where it came from (`source`, e.g. `genai-prices 0.2.5: openai/gpt-4o`)."""

    price: ModelPrice
    source: str


@dataclass(frozen=True)
class PriceTable:
    """Model prices, resolved in this order (names lower-case):

    1. a user file's prices and aliases (`--prices FILE`; `overrides` names them);
    2. an explicit `price_as` mapping (`--price-as NAME=PRICED`): NAME costs what PRICED costs,
       even when a price source knows NAME (a deliberate mapping wins);
    3. the maintained source, genai-prices (`maintained`; None: not used);
    4. the packaged `router_model/prices.json` (`models`/`aliases` not in `overrides`).

    `as_of`/`source`/`files` describe the price files; `source_of(model)` where one price came from.
    """

    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str] = field(default_factory=dict)
    version: int = SUPPORTED_VERSION
    as_of: str = ""
    source: str = ""
    currency: str = CURRENCY
    unit: str = UNIT
    files: tuple[str, ...] = ()
    overrides: frozenset[str] = frozenset()
    price_as: Mapping[str, str] = field(default_factory=dict)
    maintained: GenaiPrices | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # explicit model -> where its price came from
    packaged: str = ""  # the packaged table's label, `packaged router_model/prices.json (as of ...)`
    _memo: dict[str, ResolvedPrice | None] = field(init=False, default_factory=dict, compare=False, repr=False)

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
            if target not in models and not (self.maintained is not None and self.maintained.lookup(target)):
                raise ConfigError(f"alias {alias!r} points to {target!r}, which has no price")
        if self.currency != CURRENCY or self.unit != UNIT:
            raise ConfigError(f"prices must be {CURRENCY} {UNIT}, got {self.currency} {self.unit}")
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "aliases", MappingProxyType(aliases))
        object.__setattr__(self, "overrides", frozenset(normalize_model_name(n) for n in self.overrides))
        object.__setattr__(self, "price_as", MappingProxyType(
            {normalize_model_name(k): normalize_model_name(v) for k, v in self.price_as.items()}))
        object.__setattr__(self, "sources", MappingProxyType(
            {normalize_model_name(k): v for k, v in self.sources.items()}))

    def with_price_as(self, price_as: Mapping[str, str]) -> PriceTable:
        """The table with `price_as` {name: priced model} added: an explicit mapping the user gave
        (e.g. a public model priced as its GPT-4o-class stand-in). It beats genai-prices and the
        packaged table; only a name a user price file prices itself is refused (two deliberate,
        conflicting prices)."""
        if not price_as:
            return self
        mapped = dict(self.price_as)
        for name, target in price_as.items():
            key, goal = normalize_model_name(name), normalize_model_name(target)
            if key in self.overrides:
                raise ConfigError(f"--price-as {name}={target}: {name!r} already has a price of its own in "
                                  f"{self.files[-1] if self.files else 'a --prices file'}; drop one of the two")
            if goal in mapped:
                goal = mapped[goal]  # a chain NAME=OTHER, OTHER=PRICED: NAME costs what PRICED costs
            elif self._find(goal, mapped=False) is None:
                raise UnknownModelError(target, self.known_models())
            mapped[key] = goal
        return dataclasses.replace(self, price_as=mapped)

    @classmethod
    def load(cls, path: str | Path | None = None, *, price_as: Mapping[str, str] | None = None,
             maintained: bool = True) -> PriceTable:
        """genai-prices (unless `maintained` is False, or it is not installed) over the packaged
        table, both overridden/extended field by field by the file at `path` if given.

        A user file has the packaged file's layout; it may hold only `models` and/or `aliases`.
        Fields given for a model someone prices replace that price's (genai-prices', else the
        packaged one's; a price field given drops that model's long-context tiers); a new model
        needs `input` and `output` (`cached_input` defaults to `input`, i.e. no cache discount).
        """
        meta, raw_models, raw_aliases = parse_price_file(packaged_text(), PACKAGED_FILE)
        packaged_label = f"packaged {PACKAGED_FILE} (as of {meta.get('as_of', '?')})"
        source = load_genai_prices() if maintained else None
        files = [PACKAGED_FILE]
        models: dict[str, ModelPrice] = {}
        for name, fields in raw_models.items():
            try:
                models[name] = _model_price(fields, None)
            except (ConfigError, KeyError) as exc:
                raise PriceFileError(str(exc), file=PACKAGED_FILE, key=f"models.{name}") from None
        sources = dict.fromkeys(models, packaged_label)
        overrides: set[str] = set()
        if path is not None:
            label = str(path)
            try:
                user_text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PriceFileError(f"cannot read price file: {exc}", file=label) from None
            user_meta, user_models, user_aliases = parse_price_file(user_text, label)
            lower = cls(models=models, aliases=raw_aliases, maintained=source, **meta)  # what the file overrides
            for name, fields in user_models.items():
                found = lower.lookup(name)
                base = found.price if found else None
                if base is None and not {"input", "output"} <= set(fields):
                    missing = "input" if "input" not in fields else "output"
                    raise PriceFileError(f"missing required field {missing!r}", file=label, key=f"models.{name}")
                try:
                    models[name] = _model_price(fields, base)
                except ConfigError as exc:
                    raise PriceFileError(str(exc), file=label, key=f"models.{name}") from None
                partial = found is not None and not {"input", "output"} <= set(fields)
                sources[name] = f"--prices {label}" + (f" over {found.source}" if partial and found else "")
                raw_aliases.pop(name, None)  # a user price beats a packaged alias of that name
            for alias, target in user_aliases.items():
                if target not in models and lower.lookup(target) is None:
                    raise PriceFileError(f"points to {target!r}, which has no price", file=label, key=f"aliases.{alias}")
                models.pop(alias, None)  # a user alias beats a packaged price of that name
                sources.pop(alias, None)
            raw_aliases.update(user_aliases)
            overrides = set(user_models) | set(user_aliases)
            meta.update(user_meta)
            files.append(label)
        try:
            table = cls(models=models, aliases=raw_aliases, files=tuple(files), overrides=frozenset(overrides),
                        maintained=source, sources=sources, packaged=packaged_label, **meta)
        except ConfigError as exc:
            raise PriceFileError(str(exc), file=" + ".join(files)) from None
        return table.with_price_as(price_as or {})

    # ------------------------------------------------------------ lookups

    def _find(self, name: str, *, mapped: bool = True, depth: int = 0) -> ResolvedPrice | None:
        """The price of normalized `name` in the order of the class docstring, or None."""
        if depth > 8:  # aliases of aliases: a loop is a bug in a price file, not a price
            return None
        if name in self.overrides:
            if name in self.models:
                return ResolvedPrice(self.models[name], self.sources.get(name, "--prices"))
            if name in self.aliases:
                return self._find(self.aliases[name], mapped=mapped, depth=depth + 1)
        if mapped and name in self.price_as:
            target = self.price_as[name]
            found = self._find(target, mapped=False, depth=depth + 1)
            return ResolvedPrice(found.price, f"--price-as {name}={target}: {found.source}") if found else None
        if self.maintained is not None:
            if name not in self._memo:
                entry = self.maintained.lookup(name)
                fallback = self.models.get(name)
                self._memo[name] = (ResolvedPrice(_from_maintained(entry, fallback), f"{self.maintained.label}: {entry.matched}")
                                    if entry is not None else None)
            if self._memo[name] is not None:
                return self._memo[name]
        if name in self.models:
            return ResolvedPrice(self.models[name], self.sources.get(name, self.packaged or "the table's own prices"))
        if name in self.aliases:
            return self._find(self.aliases[name], mapped=mapped, depth=depth + 1)
        return None

    def lookup(self, model: str) -> ResolvedPrice | None:
        """The price of `model` and where it came from, or None if nothing prices it."""
        return self._find(normalize_model_name(model))

    def known_models(self) -> tuple[str, ...]:
        """Priced model names, sorted (aliases and genai-prices' matching variants not included)."""
        names = set(self.models)
        if self.maintained is not None:
            names.update(self.maintained.model_ids())
        return tuple(sorted(names))

    def resolve(self, model: str) -> str:
        """The name `model` is priced under: itself, or the target of its alias or mapping;
        UnknownModelError if nothing prices it."""
        name = normalize_model_name(model)
        if self._find(name) is None:
            raise UnknownModelError(model, self.known_models())
        for _ in range(8):
            if name in self.overrides and name in self.aliases:
                name = self.aliases[name]
            elif name in self.price_as:
                name = self.price_as[name]
            elif name in self.aliases and name not in self.models and (
                    self.maintained is None or self.maintained.lookup(name) is None):
                name = self.aliases[name]
            else:
                break
        return name

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def price(self, model: str) -> ModelPrice:
        """The price of `model`, resolving aliases; UnknownModelError (a ConfigError) if unpriced."""
        found = self.lookup(model)
        if found is None:
            raise UnknownModelError(model, self.known_models())
        return found.price

    def source_of(self, model: str) -> str:
        """Where the price of `model` comes from; UnknownModelError if unpriced."""
        found = self.lookup(model)
        if found is None:
            raise UnknownModelError(model, self.known_models())
        return found.source

    def is_override(self, model: str) -> bool:
        """True when a user price file (`--prices`) prices or aliases `model` itself."""
        return normalize_model_name(model) in self.overrides

    def describe(self) -> str:
        """The sources in the order they are consulted, e.g. for a report header."""
        parts = [f"--prices {f}" for f in self.files[1:]]
        if self.price_as:
            parts.append("--price-as " + ", ".join(f"{k}={v}" for k, v in self.price_as.items()))
        if self.maintained is not None:
            parts.append(self.maintained.label)
        parts.append(self.packaged or "the table's own prices")
        return ", then ".join(parts)

    def provenance(self, models: Iterable[str]) -> dict[str, Any]:
        """What priced `models`, as plain JSON for an artifact's metadata and a run's params."""
        out: dict[str, Any] = {
            "source": self.describe(),
            "maintained": self.maintained.label if self.maintained is not None else None,
            "files": list(self.files),
            "as_of": self.as_of,
            "price_as": dict(self.price_as),
            "models": {},
        }
        for name in models:
            found = self.lookup(name)
            if found is not None:
                out["models"][name] = {"source": found.source, **found.price.to_dict()}
        return out

    def pricing_for_pair(self, cheap: str, strong: str) -> PairPricing:
        """Prices for a cheap/strong pair; an unpriced name is an UnknownModelError naming the fix
        (a --prices file, or an explicit --price-as mapping), so a cost figure is never silently
        built on someone else's price."""
        return PairPricing(cheap, strong, self.price(cheap), self.price(strong))


def _model_price(fields: Mapping[str, Any], base: ModelPrice | None) -> ModelPrice:
    """A price file's fields over `base` (None: a new model; `input` and `output` required)."""
    if base is None:
        return ModelPrice(
            input=fields["input"],
            output=fields["output"],
            cached_input=fields.get("cached_input", fields["input"]),
            context_window=fields.get("context_window"),
            cache_write_input=fields.get("cache_write_input"),
        )
    priced = bool(set(fields) & {"input", "output", "cached_input", "cache_write_input"})
    no_discount = base.cached_input == base.input  # then a new input price is the cached price too
    return ModelPrice(
        input=fields.get("input", base.input),
        output=fields.get("output", base.output),
        cached_input=fields.get("cached_input", fields.get("input", base.input) if no_discount else base.cached_input),
        context_window=fields.get("context_window", base.context_window),
        cache_write_input=fields.get("cache_write_input", base.cache_write_input),
        tiers=() if priced else base.tiers,
    )


def _from_maintained(entry: MaintainedEntry, fallback: ModelPrice | None) -> ModelPrice:
    """genai-prices' figures as a ModelPrice; a context window it lacks comes from the packaged entry."""

    def part(fields: Mapping[str, float | None]) -> dict[str, Any]:
        inp = fields["input"]
        return {"input": inp, "output": fields["output"],
                "cached_input": fields["cached_input"] if fields["cached_input"] is not None else inp,
                "cache_write_input": fields["cache_write_input"]}

    window = entry.context_window or (fallback.context_window if fallback is not None else None)
    return ModelPrice(**part(entry.fields), context_window=window,
                      tiers=tuple(PriceTier(above, **part(f)) for above, f in entry.tiers))


def parse_price_as(text: str) -> tuple[str, str]:
    """`NAME=PRICED` (the command-line form of a price mapping)."""
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise ValueError(f"expected NAME=PRICED_MODEL (e.g. my-model=gpt-4o-mini), got {text!r}")
    return name.strip(), target.strip()
