"""The maintained price source: pydantic's `genai-prices` (offline, bundled price data).

`router_model.cost.PriceTable` asks this module for a model's price when neither a user price
file nor an explicit `--price-as` mapping names the model, and falls back to the packaged
`router_model/prices.json` for names genai-prices does not know. genai-prices is imported
lazily (on the first lookup), so `import router_model` stays fast; if it is not installed,
the packaged file prices everything and one warning says so.

Each lookup returns plain floats (USD per 1M tokens) and the tiers genai-prices publishes
(long-context prices: a request whose own input tokens exceed the threshold pays the tier
price on all its tokens, genai-prices' "cliff" model), plus a label naming where the price
came from: `genai-prices 0.2.5: openai/gpt-4o-2024-05-13`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

DISTRIBUTION = "genai-prices"
_FIELDS = (("input", "input_mtok"), ("output", "output_mtok"), ("cached_input", "cache_read_mtok"),
           ("cache_write_input", "cache_write_mtok"))


@dataclass(frozen=True)
class MaintainedEntry:
    """One model's price as genai-prices gives it: base prices, tiers and where it was matched."""

    fields: Mapping[str, float | None]  # input, output, cached_input, cache_write_input (None: not published)
    tiers: tuple[tuple[int, Mapping[str, float | None]], ...]  # (input tokens above which, the same fields)
    context_window: int | None
    matched: str  # provider/model id genai-prices matched the name to, e.g. openai/gpt-4-turbo


class GenaiPrices:
    """Lookups in genai-prices' data snapshot (the bundled one, or one `genai_prices.UpdatePrices`
    installed in this process), cached by model name."""

    def __init__(self, version: str) -> None:
        self.version = version
        self._cache: dict[str, MaintainedEntry | None] = {}
        self._ids: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        """`genai-prices 0.2.5 (bundled data)`: the package version and which data snapshot."""
        from genai_prices import data_snapshot

        snap = data_snapshot.get_snapshot()
        data = f"data updated {snap.timestamp:%Y-%m-%d %H:%M}" if snap.from_auto_update else "bundled data"
        return f"{DISTRIBUTION} {self.version} ({data})"

    def lookup(self, name: str) -> MaintainedEntry | None:
        """The price genai-prices gives `name` (matched as genai-prices matches names, dated
        snapshots included), or None when it knows no such model or publishes no token prices."""
        if name not in self._cache:
            self._cache[name] = self._lookup(name)
        return self._cache[name]

    def _lookup(self, name: str) -> MaintainedEntry | None:
        from genai_prices import data_snapshot

        try:
            provider, model = data_snapshot.get_snapshot().find_provider_model(name, None, None, None)
            prices = model.get_prices(datetime.now(tz=UTC))
        except (LookupError, ValueError):
            return None
        raw = {ours: getattr(prices, theirs, None) for ours, theirs in _FIELDS}
        if raw["input"] is None or raw["output"] is None:
            return None  # an image/audio/search-only model: no token prices to route on
        starts = sorted({t.start for v in raw.values() for t in getattr(v, "tiers", None) or ()})
        base = {k: _at(v, None) for k, v in raw.items()}
        tiers = tuple((start, {k: _at(v, start) for k, v in raw.items()}) for start in starts)
        return MaintainedEntry(base, tiers, model.context_window, f"{provider.id}/{model.id}")

    def model_ids(self) -> tuple[str, ...]:
        """Every model id in the snapshot (for 'did you mean' suggestions)."""
        if self._ids is None:
            from genai_prices import data_snapshot

            self._ids = tuple(sorted({m.id.lower() for p in data_snapshot.get_snapshot().providers for m in p.models}))
        return self._ids


def _at(value: Any, above: int | None) -> float | None:
    """A genai-prices price (Decimal or TieredPrices) as a float, for a request just above `above`
    input tokens (None: the base price)."""
    if value is None:
        return None
    if not hasattr(value, "tiers"):
        return float(value)
    price = value.base
    if above is not None:
        for tier in value.tiers:  # sorted ascending by genai-prices
            if tier.start <= above:
                price = tier.price
    return float(price)


_warned = False


def load_genai_prices() -> GenaiPrices | None:
    """genai-prices if it is installed, else None (and one warning: the packaged file prices alone)."""
    global _warned
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(DISTRIBUTION)
        from genai_prices import data_snapshot

        data_snapshot.get_snapshot()  # reads the data now (~0.1 s), not in a server's first priced request
    except (PackageNotFoundError, ImportError) as exc:
        if not _warned:
            log.warning("%s is not installed (%s): prices come from the packaged router_model/prices.json only",
                        DISTRIBUTION, exc)
            _warned = True
        return None
    return GenaiPrices(found)


def price_params(record: Mapping[str, Any]) -> dict[str, str]:
    """A `prices` record (PriceTable.provenance) as flat MLflow params: `prices.source` and, per
    model, `prices.model.<name>` = where its price came from."""
    out = {"prices.source": str(record.get("source", ""))}
    for name, entry in dict(record.get("models", {})).items():
        if isinstance(entry, Mapping):
            out[f"prices.model.{name}"] = str(entry.get("source", ""))
    return out
