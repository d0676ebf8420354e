"""A line every N seconds while a long training stage runs, so `router-train --no-progress` is never silent.

    with Heartbeat("embedding", total=len(texts), unit="texts", say=print) as hb:
        for batch in batches:
            ...
            hb.advance(len(batch))

prints, every `interval` seconds (default 30) until the block ends:

    embedding: 12,345 / 60,000 texts, 41/s, ~19 min left
    fitting heads: still running, 2 min 30 s so far

A daemon thread does the printing; the stage itself only bumps a counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

DEFAULT_INTERVAL = 30.0

__all__ = ["DEFAULT_INTERVAL", "Heartbeat", "format_duration"]


def _print(msg: str) -> None:
    print(msg, flush=True)


def format_duration(seconds: float) -> str:
    """`45 s`, `2 min 30 s`, `22 min`, `1 h 05 min`."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 600:
        return f"{s // 60} min {s % 60:02d} s" if s % 60 else f"{s // 60} min"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Heartbeat:
    """Prints a progress line every `interval` seconds from a daemon thread while the `with` block runs."""

    def __init__(self, stage: str, *, total: int | None = None, unit: str = "items", interval: float | None = None,
                 say: Callable[[str], None] = _print, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        interval = DEFAULT_INTERVAL if interval is None else interval  # read at call time: tests shorten it
        if interval <= 0:
            raise ValueError(f"the heartbeat interval must be > 0 seconds, got {interval!r}")
        self.stage, self.total, self.unit, self.interval = stage, total, unit, interval
        self.say, self.enabled, self.clock = say, enabled, clock
        self.done = 0
        self.beats = 0
        self._start = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def advance(self, n: int = 1) -> None:
        """Count `n` more units done (read by the heartbeat thread; an int add, no lock needed)."""
        self.done += n

    def line(self) -> str:
        """The progress line for now."""
        elapsed = max(self.clock() - self._start, 1e-9)
        if self.total is None:
            count = f", {self.done:,} {self.unit}" if self.done else ""
            return f"{self.stage}: still running{count}, {format_duration(elapsed)} so far"
        rate = self.done / elapsed
        head = f"{self.stage}: {self.done:,} / {self.total:,} {self.unit}, {rate:,.0f}/s"
        if self.done <= 0:
            return f"{head}, {format_duration(elapsed)} so far"
        left = max(self.total - self.done, 0) / rate if rate > 0 else 0.0
        return f"{head}, ~{format_duration(left)} left"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.say(self.line())
            except Exception:  # noqa: BLE001 - a broken output must not end the stage it reports on
                return
            self.beats += 1

    def __enter__(self) -> Heartbeat:
        self._start = self.clock()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.stage}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
