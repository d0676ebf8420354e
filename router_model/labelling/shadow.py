"""Shadow grading in the gateway: after a routed response has gone out, label the request.

`ShadowGrader.offer` is called by the gateway once a response is complete; it samples, drops
requests carrying a configured tag, and puts a job on a bounded queue without waiting (a full
queue drops the job and counts it). Worker tasks then ask the model that was not chosen, grade
both answers with the rubric (`grading.grade_request`, the same code as `router-label`) and
append a labelled-log row. Nothing here runs on the response path except `offer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router_model.dollars import Usage
from router_model.labelling.config import ShadowConfig
from router_model.labelling.grading import LabelRequest, grade_request
from router_model.labelling.rubric import Rubric
from router_model.labelling.upstream import Answer, ChatCaller
from router_model.labelling.writer import LabelsWriter, ungraded_path

log = logging.getLogger(__name__)
SOURCE = "gateway-shadow"
_NOT_FORWARDED = ("model", "stream", "stream_options")


@dataclass(frozen=True)
class ShadowJob:
    """What a finished routed request leaves for grading (the served answer's bytes; None for a stream)."""

    body: Mapping[str, Any]
    tags: tuple[str, ...]
    headers: Mapping[str, str]
    served_model: str
    served_content: bytes | None
    cheap_model: str
    strong_model: str
    artifact_version: str
    mode: str
    request_id: str
    # Every tag the request carries (header and body): what `drop_tags` is checked against; `tags`
    # are the routing tags (the header's when present), stored in the row.
    all_tags: tuple[str, ...] = ()
    # Opens the grading's trace span, a child of the request's (router_model/gateway/tracing.py); None: untraced.
    trace: Callable[[], contextlib.AbstractContextManager[Any]] | None = None


class ShadowGrader:
    """A bounded queue of jobs and the worker tasks that grade them; `metrics` is the gateway's."""

    def __init__(self, config: ShadowConfig, *, make_caller: Callable[[Mapping[str, str]], ChatCaller], metrics: Any,
                 seed: int | None = None) -> None:
        self.config = config
        self.rubric = Rubric(config.grading)  # imports custom checks and reads the template now: fail at start-up
        self._make_caller = make_caller
        self.metrics = metrics
        self._rng = random.Random(seed)
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self.writer = LabelsWriter(config.out)
        self._ungraded: LabelsWriter | None = None
        self.busy = 0

    @property
    def queue(self) -> asyncio.Queue[ShadowJob]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.config.queue_size)
        return self._queue

    @property
    def pending(self) -> int:
        """Jobs queued or being graded."""
        return (self._queue.qsize() if self._queue is not None else 0) + self.busy

    def offer(self, job: ShadowJob) -> bool:
        """Sample and enqueue without waiting; False when the job is not taken (not sampled, tagged, queue full)."""
        if self.config.drop_tags and any(t.lower() in self.config.drop_tags for t in (*job.tags, *job.all_tags)):
            self.metrics.shadow_dropped.labels("tag").inc()
            return False
        if self.config.sample_rate < 1.0 and self._rng.random() >= self.config.sample_rate:
            return False
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels("queue_full").inc()
            return False
        self.metrics.shadow_sampled.inc()
        self.metrics.shadow_queue.set(self.queue.qsize())
        return True

    async def run(self) -> None:
        """The worker tasks; runs until cancelled (jobs still queued then are lost, as documented)."""
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.config.workers)))
        finally:
            self.close()

    async def _worker(self) -> None:
        queue = self.queue
        while True:
            job = await queue.get()
            self.busy += 1
            self.metrics.shadow_queue.set(queue.qsize())
            try:
                with job.trace() if job.trace is not None else contextlib.nullcontext():
                    await self.grade(job)
            except Exception:  # noqa: BLE001 - one bad job must not stop the workers
                log.exception("shadow grading of request %s failed", job.request_id)
                self.metrics.shadow_rows.labels("failed").inc()
            finally:
                self.busy -= 1
                queue.task_done()

    async def grade(self, job: ShadowJob) -> dict[str, Any]:
        """Grade one job and append its row (to the ungraded file when an outcome is missing)."""
        caller = self._make_caller(job.headers)
        given: dict[str, Answer] = {}
        if job.served_content is not None:
            try:
                data = json.loads(job.served_content)
            except ValueError:
                data = None
            if isinstance(data, dict):
                usage = Usage.from_response(data.get("usage"))
                given[job.served_model] = Answer(job.served_model, data, usage, caller.price(job.served_model, usage), 1)
        body = {k: v for k, v in job.body.items() if k not in _NOT_FORWARDED}
        request = LabelRequest(body=body, tags=job.tags)
        graded = await grade_request(
            caller, self.rubric, request, (job.cheap_model, job.strong_model), given=given, source=SOURCE,
            artifact_version=job.artifact_version,
            extra={"mode": job.mode, "served_model": job.served_model, "request_id": job.request_id},
            logprobs_for=job.cheap_model if self.config.logprobs else None,
        )
        row = graded.to_row(store_answers=self.config.store_answers)
        if graded.complete:
            self.writer.write(row)
            self.metrics.shadow_rows.labels("labelled").inc()
        else:
            if self._ungraded is None:
                self._ungraded = LabelsWriter(ungraded_path(self.config.out))
            self._ungraded.write(row)
            self.metrics.shadow_rows.labels("ungraded").inc()
        if graded.labelling_cost is not None:
            self.metrics.shadow_cost.inc(graded.labelling_cost)
        return row

    def close(self) -> None:
        self.writer.close()
        if self._ungraded is not None:
            self._ungraded.close()
