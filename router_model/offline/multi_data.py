"""The labelled log as an N-model outcome matrix: passes with a mask, and dollars per row and model.

Rows may carry outcomes for any subset of the models (logs from different sources pool): a
missing outcome is NaN in `passed` and is masked wherever it is used, never counted as a fail.
Dollars per call come from the row's own `cost_usd` {model: USD} when the log has it (the
RouterBench rows do), else from the price table and the row's token counts (or the documented
estimates), exactly as the two-model path prices a row (`router_model/offline/costs.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable, UnknownModelError
from router_model.dollars import request_cost
from router_model.encoder import TextEncoder, estimate_tokens
from router_model.errors import ConfigError
from router_model.offline.log import LogFormatError, LogProblem, LogReadResult, ReadOptions, read_logs
from router_model.offline.row import LabelledRecord
from router_model.offline.split import SPLIT_NAMES, assign_splits, normalize_prompt

ALL_MODELS = "all"


def parse_models(text: str) -> tuple[str, ...] | None:
    """`--models a,b,c` -> the names; `all` -> None (every model the log has)."""
    if text.strip().lower() == ALL_MODELS:
        return None
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if len(names) < 2:
        raise ConfigError(f"--models needs at least two model names (or 'all'), got {text!r}")
    return names


@dataclass(frozen=True)
class MultiLog:
    """Records with an outcome matrix over `models` (ordered by mean dollars per call, cheapest first)."""

    read: LogReadResult
    records: tuple[LabelledRecord, ...]
    models: tuple[str, ...]
    passed: np.ndarray  # (n, N) 1.0 / 0.0, NaN where the row has no outcome for the model
    row_cost: np.ndarray  # (n, N) the row's own cost_usd, NaN where it has none
    skipped_no_outcome: int  # rows with an outcome for none of the models (counted, not used)

    @property
    def mask(self) -> np.ndarray:
        return ~np.isnan(self.passed)


def _cost_usd(records: Sequence[LabelledRecord], models: Sequence[str]) -> np.ndarray:
    """Each record's `cost_usd` per model, read back from its line (the log reader keeps outcomes only)."""
    out = np.full((len(records), len(models)), np.nan)
    col = {m: j for j, m in enumerate(models)}
    by_file: dict[str, dict[int, int]] = {}
    for i, r in enumerate(records):
        by_file.setdefault(r.source_file, {})[r.line_no] = i
    for file, lines in by_file.items():
        with open(file, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                row = lines.get(line_no)
                if row is None or b"cost_usd" not in raw:
                    continue
                costs = json.loads(raw).get("cost_usd")
                if not isinstance(costs, dict):
                    continue
                for m, v in costs.items():
                    j = col.get(m)
                    if j is None or v is None:
                        continue
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                        raise LogFormatError(
                            [LogProblem(file, line_no, f"cost_usd.{m}", f"expected a non-negative number, got {v!r}")],
                            skippable=False,
                        )
                    out[row, j] = float(v)
    return out


def read_multi(
    paths: Sequence[str | Path], models: Sequence[str] | None = None, *, options: ReadOptions = ReadOptions()
) -> MultiLog:
    """Read logs for N models (None: every model the log has). Rows lacking some models are kept, masked."""
    opts = dataclasses.replace(options, require_pair=False)
    read = read_logs(paths, options=opts)
    present = sorted({m for r in read.records for m in r.passed})
    if models is None:
        names = tuple(present)
    else:
        absent = [m for m in models if m not in present]
        if absent:
            raise ConfigError(f"--models: {absent} never occur in the log; it has outcomes for: {present}")
        names = tuple(models)
    if len(names) < 2:
        raise ConfigError(f"the log has outcomes for {list(names)}; routing needs at least two models")
    keep = [r for r in read.records if any(m in r.passed for m in names)]
    passed = np.array([[float(r.passed[m]) if m in r.passed else np.nan for m in names] for r in keep])
    row_cost = _cost_usd(keep, names)
    return MultiLog(read, tuple(keep), names, passed, row_cost, len(read.records) - len(keep))


@dataclass(frozen=True)
class MultiDataset:
    """Aligned arrays for N models; `cost` is dollars per call (n, N), `split` by normalised prompt."""

    texts: list[str]
    n_tokens: np.ndarray
    models: tuple[str, ...]
    passed: np.ndarray
    cost: np.ndarray
    split: np.ndarray
    cost_source: dict[str, str]  # model -> "cost_usd" (the log's own) or "prices" (the price table)

    def rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def split_counts(self) -> dict[str, int]:
        return {k: int((self.split == k).sum()) for k in SPLIT_NAMES}

    @property
    def mask(self) -> np.ndarray:
        return ~np.isnan(self.passed)

    def reorder(self, order: Sequence[int] | np.ndarray) -> MultiDataset:
        """The same data with the model columns in `order`."""
        o = [int(j) for j in order]
        models = tuple(self.models[j] for j in o)
        return MultiDataset(self.texts, self.n_tokens, models, self.passed[:, o], self.cost[:, o], self.split,
                            {m: self.cost_source[m] for m in models})


def build_multi_dataset(
    log: MultiLog,
    encoder: TextEncoder,
    prices: PriceTable,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    group_keys: Sequence[str] | None = None,
) -> MultiDataset:
    """Arrays for N models, columns ordered cheapest first by mean dollars per call.

    `group_keys` overrides the split's grouping (default: the normalised prompt), e.g. to keep
    questions shared with another data set on the same side of the split.
    """
    recs = log.records
    texts = [r.classifier_text for r in recs]
    n_tokens = np.array([encoder.count_tokens(r.full_text) for r in recs], dtype=np.int64)
    keys = list(group_keys) if group_keys is not None else [normalize_prompt(t) for t in texts]
    if len(keys) != len(recs):
        raise ValueError(f"{len(keys)} group keys for {len(recs)} rows")
    split = assign_splits(keys, fractions=fractions, seed=seed)
    inp = np.array([r.input_tokens if r.input_tokens is not None else estimate_tokens(r.full_text) for r in recs], float)
    out = np.array([r.output_tokens if r.output_tokens is not None else output_tokens for r in recs], float)
    cost = log.row_cost.copy()
    source: dict[str, str] = {}
    for j, m in enumerate(log.models):
        missing = np.isnan(cost[:, j])
        if not missing.any():
            source[m] = "cost_usd"
            continue
        try:
            price = prices.price(m)
        except UnknownModelError as e:
            raise UnknownModelError(m, e.known) from None
        cost[missing, j] = request_cost(price, inp[missing], out[missing])
        source[m] = "prices" if missing.all() else "cost_usd+prices"
    ds = MultiDataset(texts, n_tokens, log.models, log.passed, cost, split, source)
    order = np.argsort(np.nanmean(np.where(ds.mask, ds.cost, np.nan), axis=0), kind="stable")
    return ds.reorder(order)
