"""Chat completions for grading: one POST per call, retried on 429/5xx/timeouts with backoff.

A 429 or 5xx answer's `retry-after` (seconds or an HTTP date) is honoured, capped at
`RetryPolicy.max_wait`; without one the wait doubles from `base` with jitter. Other 4xx are not
retried. Every answer is priced from its `usage` with the price table (None: unpriced).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from router_model.cost import PriceTable
from router_model.dollars import Usage, usage_cost
from router_model.labelling.errors import LabellingError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class CallFailedError(LabellingError):
    """A grading call failed for good; `status` is the HTTP status (None: no answer at all)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a call that may succeed later."""

    retries: int = 4
    base: float = 0.5
    max_wait: float = 60.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        return min(self.base * (2**attempt) * (0.5 + random.random()), self.max_wait)


@dataclass(frozen=True)
class Answer:
    """A 200 answer: its JSON, usage and dollars, and how many tries it took."""

    model: str
    data: Mapping[str, Any]
    usage: Usage | None
    cost: float | None
    tries: int


def retry_after_seconds(value: str | None) -> float | None:
    """`retry-after` as seconds: a number, or an HTTP date (relative to now); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class ChatCaller:
    """Sends chat completions through a shared httpx client; the caller supplies URL and headers per model."""

    def __init__(
        self,
        client: Callable[[], httpx.AsyncClient],
        *,
        url_for: Callable[[str], str],
        headers_for: Callable[[str], dict[str, str]],
        prices: PriceTable,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._client = client
        self._url_for = url_for
        self._headers_for = headers_for
        self.prices = prices
        self.retry = retry
        self.retries_done = 0

    def price(self, model: str, usage: Usage | None) -> float | None:
        return usage_cost(self.prices, model, usage) if usage is not None else None

    async def complete(self, model: str, body: Mapping[str, Any]) -> Answer:
        """POST `body` (with `model` set, not streamed) until a 200, a final error, or the retries run out."""
        payload = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        payload["model"] = model
        try:
            content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from the client's JSON ("\ud800"): send it escaped
            content = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
        headers = self._headers_for(model)
        headers["content-type"] = "application/json"
        last = ""
        for attempt in range(self.retry.retries + 1):
            retry_after: float | None = None
            status: int | None = None
            try:
                resp = await self._client().post(self._url_for(model), content=content, headers=headers)
            except httpx.TimeoutException:
                last = f"{model}: the upstream did not answer in time"
            except httpx.HTTPError as exc:
                last = f"{model}: cannot reach the upstream ({exc.__class__.__name__})"
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        raise CallFailedError(f"{model}: the upstream's answer is not a JSON object", status=status)
                    usage = Usage.from_response(data.get("usage"))
                    return Answer(model, data, usage, self.price(model, usage), attempt + 1)
                last = f"{model}: the upstream answered {status}: {resp.text[:200]}"
                if status not in RETRY_STATUSES:
                    raise CallFailedError(last, status=status)
                retry_after = retry_after_seconds(resp.headers.get("retry-after"))
            if attempt < self.retry.retries:
                self.retries_done += 1
                await asyncio.sleep(self.retry.wait(attempt, retry_after))
        raise CallFailedError(f"{last} (after {self.retry.retries + 1} tries)", status=status)
