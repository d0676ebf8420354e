"""Grade one request on both models with the rubric and build its labelled-log row.

The one grading path for shadow grading and `router-label`: answers the caller already has (the
gateway's served answer) are reused, the missing ones are asked for; each answer goes through
the programmatic checks, then (if they pass and a judge is configured) the judge. Outcome per
model: a failed check -> score 0; a judge verdict -> score / 10; no judge -> 1 (passed every
check); a check that could not run, a failed call or an unparsable verdict -> no outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_model.answer_features import chat_token_logprobs
from router_model.labelling.judge import Verdict, judge_body, verdict_of
from router_model.labelling.rubric import Reference, Rubric, answer_text
from router_model.labelling.upstream import Answer, CallFailedError, ChatCaller
from router_model.labelling.writer import request_hash, request_messages
from router_model.observe.decision_log import utc_timestamp


@dataclass(frozen=True)
class LabelRequest:
    """A request to label: the chat body (without `model`), its tags, an optional reference answer."""

    body: Mapping[str, Any]
    tags: tuple[str, ...] = ()
    reference: Reference | None = None
    id: str | None = None

    @property
    def messages(self) -> list[Any]:
        return request_messages(self.body["messages"])

    @property
    def hash(self) -> str:
        return request_hash(self.messages)


@dataclass
class ModelGrade:
    """How one model did: `score` in [0, 1] or None (no outcome, `problem` says why)."""

    model: str
    score: float | None = None
    answer: Answer | None = None
    paid: bool = True  # the answer was asked for by the labelling (not the application's own call)
    failed_check: str | None = None
    check_detail: str | None = None
    verdict: Verdict | None = None
    judge_answer: Answer | None = None
    problem: str | None = None

    @property
    def cost(self) -> float | None:
        parts = [a.cost for a in (self.answer, self.judge_answer) if a is not None]
        return None if any(c is None for c in parts) else float(sum(c for c in parts if c is not None))

    @property
    def labelling_cost(self) -> float | None:
        parts = [a.cost for a in ((self.answer if self.paid else None), self.judge_answer) if a is not None]
        return None if any(c is None for c in parts) else float(sum(c for c in parts if c is not None))


@dataclass
class GradedRequest:
    request: LabelRequest
    grades: list[ModelGrade]
    source: str
    rubric: str
    judge: str | None
    artifact_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(g.score is not None for g in self.grades)

    @property
    def cost(self) -> float | None:
        costs = [g.cost for g in self.grades]
        return None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))

    @property
    def labelling_cost(self) -> float | None:
        costs = [g.labelling_cost for g in self.grades]
        return None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))

    def to_row(self, *, store_answers: bool = True) -> dict[str, Any]:
        """The row in the labelled-log format (data/README.md, format A), plus grading details."""
        req = self.request
        h = req.hash
        row: dict[str, Any] = {"id": req.id or f"label-{h.split(':', 1)[1][:16]}", "request_hash": h,
                               "timestamp": utc_timestamp(), "messages": req.messages}
        if req.tags:
            row["tags"] = list(req.tags)
        usages = [g.answer.usage for g in self.grades if g.answer is not None and g.answer.usage is not None]
        if usages:
            row["input_tokens"] = max(u.prompt_tokens for u in usages)
            row["output_tokens"] = round(sum(u.completion_tokens for u in usages) / len(usages))
        row["outcomes"] = {g.model: {"score": g.score} for g in self.grades if g.score is not None}
        ungraded = {g.model: g.problem or "no outcome" for g in self.grades if g.score is None}
        if ungraded:
            row["ungraded"] = ungraded
        grading: dict[str, Any] = {}
        for g in self.grades:
            info: dict[str, Any] = {}
            if g.failed_check:
                info["failed_check"] = g.failed_check
                if g.check_detail:
                    info["check_detail"] = g.check_detail
            if g.verdict is not None:
                info["judge_score"] = g.verdict.score
                if g.verdict.reason:
                    info["judge_reason"] = g.verdict.reason
                if g.verdict.problem:
                    info["judge_problem"] = g.verdict.problem
                    info["judge_raw"] = g.verdict.raw
            if g.problem:
                info["problem"] = g.problem
            if g.answer is not None:
                info["answer_model"] = g.answer.data.get("model")
                if g.answer.usage is not None:
                    info["usage"] = g.answer.usage.to_dict()
                info["answer_cost_usd"] = g.answer.cost
                info["answer_paid_by_labelling"] = g.paid
                if store_answers:
                    info["answer"] = answer_text(g.answer.data)
                    logprobs = chat_token_logprobs(g.answer.data)
                    if logprobs is not None:  # asked for (`logprobs_for`), or the served answer carried them
                        info["token_logprobs"] = [round(v, 4) for v in logprobs]
            if g.judge_answer is not None:
                info["judge_cost_usd"] = g.judge_answer.cost
            grading[g.model] = info
        row["grading"] = grading
        row["metadata"] = {"source": self.source, "rubric": self.rubric, "judge": self.judge, **self.extra}
        if self.artifact_version:
            row["artifact_version"] = self.artifact_version
        row["cost_usd"] = self.cost
        row["labelling_cost_usd"] = self.labelling_cost
        return row


async def _grade_answer(caller: ChatCaller, rubric: Rubric, request: LabelRequest, grade: ModelGrade) -> None:
    assert grade.answer is not None
    result = rubric.check(request.body, grade.answer.data, request.reference)
    if result.error:
        grade.problem = result.error
        return
    if result.failed:
        grade.failed_check, grade.check_detail, grade.score = result.failed, result.detail, 0.0
        return
    if rubric.judge is None:
        grade.score = 1.0
        return
    prompt = rubric.judge_prompt(request.body["messages"], answer_text(grade.answer.data))
    try:
        grade.judge_answer = await caller.complete(rubric.judge, judge_body(prompt))
    except CallFailedError as exc:
        grade.problem = f"judge call failed: {exc}"
        return
    grade.verdict = verdict_of(dict(grade.judge_answer.data))
    if grade.verdict.score is None:
        grade.problem = f"unparsable verdict: {grade.verdict.problem}"
        return
    grade.score = grade.verdict.score / 10


async def _grade_model(
    caller: ChatCaller, rubric: Rubric, request: LabelRequest, model: str, given: Answer | None, *, logprobs: bool = False
) -> ModelGrade:
    grade = ModelGrade(model, answer=given, paid=given is None)
    if given is None:
        body = {**request.body, "logprobs": True} if logprobs else request.body
        try:
            grade.answer = await caller.complete(model, body)
        except CallFailedError as exc:
            grade.problem = f"answer call failed: {exc}"
            return grade
    await _grade_answer(caller, rubric, request, grade)
    return grade


async def grade_request(
    caller: ChatCaller,
    rubric: Rubric,
    request: LabelRequest,
    models: Sequence[str],
    *,
    given: Mapping[str, Answer] | None = None,
    source: str,
    artifact_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
    logprobs_for: str | None = None,
) -> GradedRequest:
    """Both models' grades for one request (the models are asked and judged concurrently).

    `logprobs_for`: the model (the cheap one) whose answer call asks for token log-probabilities,
    kept in the row for the answer score (they change nothing else: not the answer, its price or grade).
    """
    given = given or {}
    grades = await asyncio.gather(*(_grade_model(caller, rubric, request, m, given.get(m), logprobs=m == logprobs_for)
                                    for m in models))
    return GradedRequest(
        request, list(grades), source=source, rubric=rubric.template_name or "checks-only", judge=rubric.judge,
        artifact_version=artifact_version, extra=dict(extra or {}),
    )
