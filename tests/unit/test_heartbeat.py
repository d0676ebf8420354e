"""router-train's heartbeat: a line every few seconds while a long stage runs (here every 0.05 s)."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from training import heartbeat
from training.embedding.onnx_embedder import OnnxEmbedder
from training.heartbeat import Heartbeat, format_duration


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, msg: str) -> None:
        with self.lock:
            self.lines.append(msg)


def test_a_slow_counted_stage_prints_count_rate_and_time_left() -> None:
    say = _Lines()
    with Heartbeat("embedding", total=1000, unit="texts", interval=0.05, say=say) as hb:
        for _ in range(10):
            time.sleep(0.03)
            hb.advance(20)
    assert len(say.lines) >= 3, say.lines
    pattern = re.compile(r"^embedding: [\d,]+ / 1,000 texts, [\d,]+/s, (~[\d]+ (s|min)( \d\d s)? left|\d+ s so far)$")
    assert all(pattern.match(line) for line in say.lines), say.lines
    n = len(say.lines)
    time.sleep(0.15)
    assert len(say.lines) == n  # stopped with the block


def test_an_uncounted_stage_says_it_is_still_running() -> None:
    say = _Lines()
    with Heartbeat("fitting heads", interval=0.05, say=say):
        time.sleep(0.2)
    assert say.lines and all(re.match(r"^fitting heads: still running, \d+ s so far$", ln) for ln in say.lines)


def test_a_fast_stage_prints_nothing_and_disabled_prints_nothing() -> None:
    say = _Lines()
    with Heartbeat("quick", interval=5, say=say):
        pass
    with Heartbeat("off", interval=0.01, say=say, enabled=False):
        time.sleep(0.05)
    assert say.lines == []


def test_the_line_itself_with_a_fake_clock() -> None:
    now = [100.0]
    hb = Heartbeat("embedding", total=60_000, unit="texts", clock=lambda: now[0])
    hb.advance(12_345)
    now[0] += 300.0  # 41 texts/s
    assert hb.line() == "embedding: 12,345 / 60,000 texts, 41/s, ~19 min left"
    assert format_duration(45) == "45 s" and format_duration(150) == "2 min 30 s" and format_duration(3900) == "1 h 05 min"
    with pytest.raises(ValueError):
        Heartbeat("x", interval=0)


def test_a_failing_output_does_not_break_the_stage() -> None:
    def boom(msg: str) -> None:
        raise OSError("closed pipe")

    with Heartbeat("stage", interval=0.01, say=boom):
        time.sleep(0.05)


def _slow_embedder(dim: int = 4) -> OnnxEmbedder:
    """An OnnxEmbedder whose graph is a fake that takes 20 ms a batch: no model needed."""
    emb = object.__new__(OnnxEmbedder)

    def encode_batch(texts):
        return {"n": len(texts)}, None

    def run(_outputs, feeds):
        time.sleep(0.02)
        return [np.ones((feeds["n"], dim), dtype=np.float32)]

    emb.exported = SimpleNamespace(spec=SimpleNamespace(dim=dim))
    emb.encoder = SimpleNamespace(settings=SimpleNamespace(max_length=256), encode_batch=encode_batch)
    emb.session = SimpleNamespace(run=run)
    return emb


def test_embedding_without_a_progress_bar_beats(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(heartbeat, "DEFAULT_INTERVAL", 0.05)
    texts = [f"text {i}" for i in range(64 * 12)]  # 12 batches of 64, ~0.24 s
    out = _slow_embedder().embed_uncached(texts, progress=False)
    assert out.shape == (len(texts), 4)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("embedding: ")]
    assert len(lines) >= 2, lines
    assert all(f"/ {len(texts):,} texts" in ln for ln in lines)


def test_embedding_with_a_progress_bar_does_not_beat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(heartbeat, "DEFAULT_INTERVAL", 0.05)
    _slow_embedder().embed_uncached([f"t{i}" for i in range(64 * 6)], progress=True)
    assert "embedding: " not in capsys.readouterr().out
