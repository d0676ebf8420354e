"""Dynamic batching: concurrent single requests share one graph run, as Triton's dynamic batcher does.

Why: under concurrency each request would run its own `session.run`; one run over N padded
requests costs less CPU than N runs (the graph's share: about 10% less at 4-8 requests of 64
tokens, `benchmarks/grpc_load.py`), and at most `runners` runs compete for the cores instead of
one per handler thread. The batcher belongs to neither server: `router-serve`
(service/servicer.py) and the gateway both submit to it.

How a request goes through:
1. `submit` validates and tokenises it in the caller's thread (`Router.prepare`), so a bad
   request fails alone, with its own error; a rule-decided one (image, tag, long context) needs
   no graph and is answered at once.
2. With nothing running and nothing queued it runs at once, in the caller's own thread: a lone
   request pays no window and no thread hand-over (the single-request path keeps its latency).
3. Otherwise it joins a FIFO queue. `runners` threads take batches from the head: the oldest
   request and those behind it in the same length bucket (so padding stays within one bucket),
   for the same loaded router (a reload never mixes artifacts) and with the same candidate set
   (an N-model router applies one set per `decide` call), at most `max_size`; at most
   `runners` batches run at once, a caller's own run included. A runner waits for companions
   only while another batch is running (there is concurrency), and then at most `max_delay_ms`
   after the oldest request arrived.
4. Right before the run, a request whose deadline passed, or whose caller left, is dropped
   (`DeadlineExpiredError`, or its future cancelled): nobody would receive its answer.
5. One `Router.decide` call (with candidates: the choice among that set) runs the
   batch (one `session.run` per 32, like `predict_batch`) and each caller's future gets its own
   decision: `Router.predict`'s to 1e-6 (both graphs are batch-invariant; int8 artifacts
   trained before the fixed activation scales move by up to ~3e-3 with their companions,
   docs/service.md).
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router_model.errors import ConfigError, RouterError

if TYPE_CHECKING:  # config.py imports this module: keep `router-serve --help` free of numpy and tokenizers
    from router_model.decision import RoutingDecision
    from router_model.request import Request
    from router_model.router import Router

# Length buckets (graph tokens, special tokens included): a batch holds one bucket, so no request
# is padded to more than about twice its own length.
DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)


class DeadlineExpiredError(RouterError):
    """The caller's deadline passed before its batch ran; it was dropped, not computed."""


class BatcherClosedError(RouterError):
    """The batcher was closed (the server is stopping) before the request ran."""


@dataclass(frozen=True)
class BatchingConfig:
    """`max_delay_ms`: longest wait for companions once there is concurrency; `max_size`: most
    requests per batch; `runners`: batches computed at once (one per core with one onnxruntime
    thread each); `buckets`: upper bounds of the length buckets, in graph tokens."""

    max_delay_ms: float = 2.0
    max_size: int = 32
    runners: int = 2
    buckets: tuple[int, ...] = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if not 0 <= self.max_delay_ms <= 1000:
            raise ConfigError(f"batch max_delay_ms must be in 0..1000, got {self.max_delay_ms}")
        if self.max_size < 1:
            raise ConfigError(f"batch max_size must be at least 1, got {self.max_size}")
        if self.runners < 1:
            raise ConfigError(f"batch runners must be at least 1, got {self.runners}")
        buckets = tuple(int(b) for b in self.buckets)
        if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ConfigError(f"batch buckets must be increasing positive lengths, got {self.buckets}")
        object.__setattr__(self, "buckets", buckets)


@dataclass(frozen=True)
class BatchStats:
    """Counters since start. `immediate`: lone requests run without any wait; `waited`: batches
    that waited for companions; `expired` / `cancelled`: requests dropped before their run;
    `rules`: requests a rule decided without the graph."""

    batches: int
    items: int
    immediate: int
    waited: int
    expired: int
    cancelled: int
    rules: int
    largest: int

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


Candidates = tuple[str, ...]


def check_candidates(router: Router, candidates: Sequence[str] | None) -> Candidates | None:
    """The candidate set as a batch key (None: all models), checked before the request queues,
    so an unknown name fails alone (a pair accepts only its own two, which restrict nothing)."""
    if candidates is None:
        return None
    if router.allowed(candidates) is None:  # a pair named its own two models: no restriction
        return None
    return tuple(candidates)


def _decide(router: Router, prepared: list[Any], candidates: Candidates | None) -> list[RoutingDecision]:
    """One decide call: the graph run, then the choice among `candidates` (all models when None)."""
    return router.decide(prepared, candidates)


@dataclass
class _Item:
    router: Router
    prepared: Any
    candidates: Candidates | None
    bucket: int
    deadline: float | None
    alive: Callable[[], bool] | None
    future: Future[RoutingDecision]
    enqueued: float


class Batcher:
    """Thread-safe; `submit` from any thread (gRPC handlers, the gateway's worker threads)."""

    def __init__(self, config: BatchingConfig | None = None) -> None:
        self.config = config or BatchingConfig()
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._busy = 0
        self._closed = False
        self._counts = dict.fromkeys(("batches", "items", "immediate", "waited", "expired", "cancelled", "rules", "largest"), 0)
        self._runners = [
            threading.Thread(target=self._run_forever, name=f"router-batch-{k}", daemon=True)
            for k in range(self.config.runners)
        ]
        for t in self._runners:
            t.start()

    # --- callers -------------------------------------------------------------------------
    def submit(
        self,
        router: Router,
        request: Request,
        *,
        tags: Sequence[str] | None = None,
        deadline: float | None = None,
        alive: Callable[[], bool] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> Future[RoutingDecision]:
        """Queue one request; its future holds the decision.

        Raises InvalidRequestError at once for a malformed request or candidate set. `deadline`
        is a `time.monotonic()` instant; `alive` is polled before the run (False: the caller
        left); `candidates` restricts an N-model router's choice (Router.predict's).
        """
        prepared = router.prepare(request, tags=tags)
        cands = check_candidates(router, candidates)
        length = router.graph_length(prepared)
        future: Future[RoutingDecision] = Future()
        if length is None:  # a rule decides: no graph, no queue
            future.set_result(_decide(router, [prepared], cands)[0])
            with self._cond:
                self._counts["rules"] += 1
            return future
        buckets = self.config.buckets
        bucket = bisect.bisect_left(buckets, length)  # past the last bound: one bucket of its own
        item = _Item(router, prepared, cands, bucket, deadline, alive, future, time.monotonic())
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            # Nothing running, nothing queued: no one to batch with. Run in the caller's thread,
            # without the hand-over to a runner and back (the single-request path).
            inline = self._busy == 0 and not self._queue
            if inline:
                self._start([item], waited=False, concurrent=False)
            else:
                self._queue.append(item)
                self._cond.notify()
        if inline:
            future.set_running_or_notify_cancel()
            self._run([item])
        return future

    def predict(
        self,
        router: Router,
        request: Request,
        *,
        tags: Sequence[str] | None = None,
        timeout: float | None = None,
        alive: Callable[[], bool] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> RoutingDecision:
        """`submit` and wait: the decision, or DeadlineExpiredError once `timeout` seconds pass."""
        if timeout is not None and timeout > threading.TIMEOUT_MAX:
            timeout = None  # gRPC reports "no deadline" as a huge remaining time
        deadline = time.monotonic() + timeout if timeout is not None else None
        future = self.submit(router, request, tags=tags, deadline=deadline, alive=alive, candidates=candidates)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # still queued: the runner skips it
            raise DeadlineExpiredError("the deadline passed while the request waited for its batch") from None

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(**self._counts)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the runners after the batches in progress; queued requests get BatcherClosedError."""
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosedError("the batcher closed before the request ran"))
        for t in self._runners:
            if t is not threading.current_thread():
                t.join(timeout)

    # --- runners -------------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """The next batch (runs under the lock); None when closed."""
        max_size, delay = self.config.max_size, self.config.max_delay_ms / 1000.0
        with self._cond:
            while True:
                # at most `runners` batches at once, a caller's own single-request run included
                while (not self._queue or self._busy >= self.config.runners) and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                head = self._queue[0]
                concurrent = self._busy > 0
                waited = False
                while concurrent and delay > 0 and self._matching(head) < max_size and not self._closed:
                    left = head.enqueued + delay - time.monotonic()
                    if left <= 0:
                        break
                    waited = True
                    self._cond.wait(left)
                    if not self._queue or self._queue[0] is not head:  # taken by another runner
                        break
                if self._closed:
                    return None
                if not self._queue or self._queue[0] is not head or self._busy >= self.config.runners:
                    continue
                batch = self._claim(head, max_size)
                if not batch:
                    continue
                self._start(batch, waited=waited, concurrent=concurrent)
                return batch

    def _start(self, batch: list[_Item], *, waited: bool, concurrent: bool) -> None:
        """Count a batch about to run (under the lock)."""
        self._busy += 1
        c = self._counts
        c["batches"] += 1
        c["items"] += len(batch)
        c["largest"] = max(c["largest"], len(batch))
        if waited:
            c["waited"] += 1
        elif len(batch) == 1 and not concurrent:
            c["immediate"] += 1

    @staticmethod
    def _same_run(it: _Item, head: _Item) -> bool:
        """Whether `it` may share `head`'s run: same artifact, length bucket and candidate set."""
        return it.router is head.router and it.bucket == head.bucket and it.candidates == head.candidates

    def _matching(self, head: _Item) -> int:
        return sum(1 for it in self._queue if self._same_run(it, head))

    def _claim(self, head: _Item, max_size: int) -> list[_Item]:
        """Remove up to max_size items like `head` from the queue, dropping expired and left callers."""
        now = time.monotonic()
        batch: list[_Item] = []
        rest: collections.deque[_Item] = collections.deque()
        for it in self._queue:
            if len(batch) >= max_size or not self._same_run(it, head):
                rest.append(it)
            elif not it.future.set_running_or_notify_cancel() or (it.alive is not None and not it.alive()):
                self._counts["cancelled"] += 1
                if it.future.running():
                    it.future.set_exception(DeadlineExpiredError("the caller left before the batch ran"))
            elif it.deadline is not None and it.deadline <= now:
                self._counts["expired"] += 1
                it.future.set_exception(DeadlineExpiredError("the deadline passed before the batch ran"))
            else:
                batch.append(it)
        self._queue = rest
        return batch

    def _run(self, batch: list[_Item]) -> None:
        """One graph run for the batch; every future gets its decision (or the run's error)."""
        try:
            decisions = _decide(batch[0].router, [it.prepared for it in batch], batch[0].candidates)
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
            for it in batch:
                it.future.set_exception(e)
        else:
            for it, d in zip(batch, decisions):
                it.future.set_result(d)
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def _run_forever(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)
