"""`router-promote`'s score cache: one version's per-row scores on one frozen eval log, on disk.

Scoring a version on the eval log (`router_model.offline.savings.score_log`: the router's ONNX graph
over every row) is the expensive part of a promotion, and re-gating candidates against the same
champion on the frozen log scores the champion again and again. A version's scores on a log are
fixed by what they are computed from, so they are kept under the promote cache directory
(`--cache-dir`, the registry download cache's root) as

    <cache-dir>/.promote-scores/<key>.npz

where `key` (`score_key`) is the sha256 of: the cache's format, the router_model and onnxruntime
versions, the artifact's identity (its artifact_version and the sha256 of its metadata.json, which
records every graph's and file's sha256), the eval log's sha256, and the pricing inputs (the
`--prices` file's sha256, `--price-as`, and the prices resolved for the log's pair).

A file holds the arrays `score_log` returns (numbers only) and one JSON string of its scalars; it is
read with `allow_pickle=False` (nothing in it is ever unpickled), written to a temporary sibling and
renamed into place (a reader never sees half a file), mode 0600. On read it is validated (its keys,
shapes and row count, its own key, and the outcomes and costs against the log as read now); a file
that does not validate is ignored (a debug log line says why), and the version is scored and the
file written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router_model import __version__ as ROUTER_MODEL_VERSION
from router_model.artifact import METADATA_FILE, read_metadata, sha256_file
from router_model.offline.savings import LabelledScores
from router_model.registry import default_registry_cache

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SCORES_DIR = ".promote-scores"
ARRAYS = ("p", "cheap_passed", "strong_passed", "cost_cheap", "cost_strong", "input_tokens", "output_tokens")
ESCALATION_ARRAYS = ("answer_scores", "answer_tokens")  # present when the version escalates on its answer score
SCALARS = "scalars"  # one JSON string: key, threshold, cheap_model, strong_model, rule_reasons, info
# Checked against the log as read now (promote_scoring.EvalView): a cached file of another log, or
# priced otherwise, never stands in for this one's.
_CHECKED = ("cheap_passed", "strong_passed", "cost_cheap", "cost_strong")


def _onnxruntime_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:  # pragma: no cover - the router cannot score without it
        return ""


def score_key(model_dir: Path, *, eval_log_sha256: str, prices: Path | None, price_as: Mapping[str, str],
              pricing: Any) -> str:
    """The cache key of one version's scores on one eval log, priced one way (see the module docstring)."""
    meta = read_metadata(model_dir)
    parts = {
        "format": CACHE_FORMAT,
        "router_model": ROUTER_MODEL_VERSION,
        "onnxruntime": _onnxruntime_version(),
        "artifact_version": meta.artifact_version,
        "metadata_sha256": sha256_file(Path(model_dir) / METADATA_FILE),
        "eval_log_sha256": eval_log_sha256,
        "prices_sha256": sha256_file(Path(prices)) if prices is not None else "",
        "price_as": sorted(price_as.items()),
        "pricing": asdict(pricing) if pricing is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class ScoreCache:
    """Per-row scores of versions on eval logs under `<root>/.promote-scores/`."""

    def __init__(self, root: Path | None = None) -> None:
        self.dir = (root or default_registry_cache()) / SCORES_DIR

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def load(self, key: str, expected: Mapping[str, np.ndarray]) -> LabelledScores | None:
        """The cached scores under `key`, or None (absent, or not valid: then a debug line says why)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                names = set(f.files)
                if not {*ARRAYS, SCALARS} <= names <= {*ARRAYS, *ESCALATION_ARRAYS, SCALARS}:
                    raise ValueError(f"keys {sorted(names)}")
                arrays = {name: np.asarray(f[name]) for name in (*ARRAYS, *ESCALATION_ARRAYS) if name in names}
                scalars = json.loads(str(f[SCALARS][()]))
            n = len(next(iter(expected.values())))
            for name, arr in arrays.items():
                if arr.dtype != np.float64 or arr.shape != (n,):
                    raise ValueError(f"{name} has dtype {arr.dtype} and shape {arr.shape}, expected ({n},) float64")
                if not np.all(np.isfinite(arr)):
                    raise ValueError(f"{name} is not finite")
            for name in ("p", "answer_scores"):
                if name in arrays and not np.all((arrays[name] >= 0.0) & (arrays[name] <= 1.0)):
                    raise ValueError(f"{name} outside [0, 1]")
            answer_threshold = scalars.get("answer_threshold")
            if ("answer_scores" in arrays) != (answer_threshold is not None):
                raise ValueError("answer scores without their threshold, or the reverse")
            for name in _CHECKED:
                if name in expected and not np.array_equal(arrays[name], np.asarray(expected[name], dtype=float)):
                    raise ValueError(f"{name} differs from the eval log as read now")
            if not isinstance(scalars, dict) or scalars.get("key") != key:
                raise ValueError("its key is not the one it is stored under")
            sc = LabelledScores(
                **arrays,
                threshold=float(scalars["threshold"]),
                cheap_model=str(scalars["cheap_model"]),
                strong_model=str(scalars["strong_model"]),
                rule_reasons={str(k): int(v) for k, v in dict(scalars["rule_reasons"]).items()},
                info=dict(scalars["info"]),
                answer_threshold=None if answer_threshold is None else float(answer_threshold),
            )
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file is scored again and rewritten
            log.debug("promote score cache: ignoring %s (%s: %s); scoring again", path, type(e).__name__, e)
            return None
        log.debug("promote score cache: hit %s", path)
        return sc

    def store(self, key: str, sc: LabelledScores) -> Path | None:
        """Write `sc` under `key` (atomically, mode 0600); a cache that cannot be written is only logged."""
        path = self.path(key)
        scalars = {"key": key, "threshold": float(sc.threshold), "cheap_model": sc.cheap_model,
                   "strong_model": sc.strong_model, "rule_reasons": {str(k): int(v) for k, v in sc.rule_reasons.items()},
                   "info": sc.info, "answer_threshold": sc.answer_threshold}
        arrays: dict[str, Any] = {name: np.asarray(getattr(sc, name), dtype=np.float64) for name in ARRAYS}
        arrays.update({name: np.asarray(getattr(sc, name), dtype=np.float64) for name in ESCALATION_ARRAYS
                       if getattr(sc, name) is not None})
        arrays[SCALARS] = np.array(json.dumps(scalars, default=str))
        tmp: str | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.dir)  # mode 0600
            with os.fdopen(fd, "wb") as out:
                np.savez(out, allow_pickle=False, **arrays)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            log.debug("promote score cache: could not write %s (%s)", path, e)
            return None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        log.debug("promote score cache: wrote %s", path)
        return path
