"""Embed texts through the exported ONNX embedder, fast and cached.

Speed comes from three things: length-sorted batches (little padding), onnxruntime on all
cores, and an on-disk cache keyed by (embedder, truncation settings, text) so a retrain on a
log that only grew embeds just the new rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_model.artifact import EmbedderSpec
from router_model.encoder import TextEncoder
from router_model.onnx_session import make_session
from training.heartbeat import Heartbeat

log = logging.getLogger(__name__)

MAX_BATCH = 64
MAX_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class ExportedEmbedder:
    """An exported embedder on disk: the graph, its tokenizer and what the artifact records of it."""

    onnx_path: Path
    tokenizer_path: Path
    spec: EmbedderSpec

    def text_encoder(self) -> TextEncoder:
        return TextEncoder.from_file(str(self.tokenizer_path), self.spec.encoder)


class OnnxEmbedder:
    """Batch embedding with an onnxruntime session of the exported embedder graph."""

    def __init__(self, exported: ExportedEmbedder, *, threads: int | None = None, cache_dir: Path | None = None) -> None:
        self.exported = exported
        self.encoder = exported.text_encoder()
        self.session = make_session(str(exported.onnx_path), threads=threads or os.cpu_count() or 1)
        key_src = json.dumps(exported.spec.to_dict(), sort_keys=True)
        self.key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
        self._db: sqlite3.Connection | None = None
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(cache_dir / "embeddings.sqlite"))
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS emb (embedder TEXT, text_sha TEXT, vec BLOB, PRIMARY KEY (embedder, text_sha))"
            )
        self.last_stats: dict[str, float] = {}

    def embed_uncached(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed in length-sorted batches; returns (n, dim) float32 in the input order."""
        dim = self.exported.spec.dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        lengths = np.array([len(t) for t in texts])
        order = np.argsort(lengths, kind="stable")
        bar = _progress(len(texts), "embedding", enabled=progress)
        # Without a bar, a line every DEFAULT_INTERVAL seconds (count, rate, time left): never silent for minutes.
        with Heartbeat("embedding", total=len(texts), unit="texts", enabled=bar is None) as beat:
            i = 0
            while i < len(order):
                # Character length is a proxy for token length; cap the padded batch area.
                approx_tokens = min(self.encoder.settings.max_length, max(8, int(lengths[order[min(i + MAX_BATCH, len(order)) - 1]] / 3)))
                size = max(1, min(MAX_BATCH, MAX_BATCH_TOKENS // approx_tokens))
                idx = order[i : i + size]
                feeds, _ = self.encoder.encode_batch([texts[j] for j in idx])
                out[idx] = self.session.run(None, feeds)[0]
                i += size
                beat.advance(len(idx))
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed with the cache: only texts never seen by this embedder are computed."""
        t0 = time.perf_counter()
        shas = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        out = np.zeros((len(texts), self.exported.spec.dim), dtype=np.float32)
        cached: dict[str, np.ndarray] = {}
        if self._db is not None:
            uniq = list(dict.fromkeys(shas))
            for k in range(0, len(uniq), 900):
                chunk = uniq[k : k + 900]
                rows = self._db.execute(
                    f"SELECT text_sha, vec FROM emb WHERE embedder=? AND text_sha IN ({','.join('?' * len(chunk))})",
                    [self.key, *chunk],
                ).fetchall()
                cached.update({s: np.frombuffer(v, dtype=np.float32) for s, v in rows})
        todo_idx: dict[str, int] = {}
        for i, s in enumerate(shas):
            if s in cached:
                out[i] = cached[s]
            elif s not in todo_idx:
                todo_idx[s] = i
        todo = list(todo_idx.items())
        t1 = time.perf_counter()
        if todo:
            vecs = self.embed_uncached([texts[i] for _, i in todo], progress=progress)
            new = dict(zip((s for s, _ in todo), vecs))
            for i, s in enumerate(shas):
                if s in new:
                    out[i] = new[s]
            if self._db is not None:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                        [(self.key, s, v.astype(np.float32).tobytes()) for s, v in new.items()],
                    )
        elapsed = time.perf_counter() - t1
        self.last_stats = {
            "texts": float(len(texts)),
            "embedded": float(len(todo)),
            "from_cache": float(len(texts) - len(todo)),
            "seconds": time.perf_counter() - t0,
            "texts_per_second": (len(todo) / elapsed) if todo and elapsed > 0 else 0.0,
        }
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _progress(total: int, desc: str, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="text", file=sys.stderr, dynamic_ncols=True)
