"""Overload limits: how many calls are admitted, and how the admitted ones share the CPU.

Two bounds, both answered without waiting behind routing work:
- `Admission`: at most N router.v1 calls at once; the next one is refused at once
  (RESOURCE_EXHAUSTED) instead of queueing in gRPC's thread pool, where it would also delay
  health checks.
- `FairSlots`: of the admitted calls, `workers` compute at a time, in arrival order. A batch
  takes a slot per chunk, so a single Route waits for at most one chunk, never a whole batch.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Admission:
    """A non-blocking counter of calls in progress, bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def try_enter(self) -> bool:
        return self._sem.acquire(blocking=False)

    def leave(self) -> None:
        self._sem.release()


class FairSlots:
    """A FIFO semaphore: a released slot goes to the longest waiter, so a caller that releases
    and asks again (a batch between chunks) cannot overtake calls already waiting."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting up to `timeout` seconds (None = no limit); False on timeout."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            ticket = threading.Event()
            self._waiters.append(ticket)
        if ticket.wait(timeout):
            return True
        with self._lock:
            if ticket.is_set():  # handed over between the timeout and the lock
                return True
            self._waiters.remove(ticket)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes straight to the first waiter
            else:
                self._free += 1

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[bool]:
        """`with slots.hold(t) as got:` - a slot for the block when `got`; released after."""
        got = self.acquire(timeout)
        try:
            yield got
        finally:
            if got:
                self.release()


class CallLimits:
    """What every router.v1 call is checked against before and after its handler (status.rpc)."""

    def __init__(self, max_concurrent_rpcs: int, max_message_bytes: int) -> None:
        self.admission = Admission(max_concurrent_rpcs)
        self.max_message_bytes = max_message_bytes
