"""The routed endpoints' one flow: parse -> decide -> forward -> relay -> account.

Chat completions (chat.py) and the Responses API (responses.py) differ only in their `Protocol`
(call.py: the body's checks, its router request form, the upstream path, where `usage` is, the
escalation checks); the steps are the collaborators' (`Decider`, `UpstreamSender`, `Accounting`,
`RelayResponse`). This module owns their order, the escalation of a failed cheap answer (a failed
fast check, or the artifact's learned answer score at or above its threshold: `_answer_score`), and
shadow grading's hand-off once the answer has gone out.
"""


from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio.to_thread
import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from router_model.gateway.accounting import Accounting
from router_model.gateway.call import (
    CHAT,
    Attempt,
    Call,
    Protocol,
    all_request_tags,
    read_body,
    request_mode,
    request_tags,
)
from router_model.gateway.config import GatewayConfig
from router_model.gateway.deciding import Decider
from router_model.gateway.errors import GatewayError, UpstreamFailedError
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.relay import RelayResponse, UsageScanner
from router_model.gateway.tracing import bind_call, shadow_trace
from router_model.gateway.upstream import UpstreamSender, client_error, response_headers
from router_model.labelling.shadow import ShadowGrader, ShadowJob
from router_model.router import Router

log = logging.getLogger("router_model.gateway")

CHECK_ANSWER_SCORE = "answer_score"  # the escalation "check" of the learned answer score (issue 26)


def error_response(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


class RoutedEndpoint:
    """One routed endpoint of a gateway; `protocol` says which API it speaks."""

    protocol: Protocol = CHAT

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, *, decider: Decider, sender: UpstreamSender,
                 accounting: Accounting, shadow: ShadowGrader | None) -> None:
        self.config = config
        self.metrics = metrics
        self.decider = decider
        self.sender = sender
        self.accounting = accounting
        self.shadow = shadow

    async def handle(self, request: HTTPRequest) -> Response:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        call: Call | None = None
        try:
            raw = await read_body(request.stream(), request.headers, self.config.max_body_bytes)
            protocol = self.protocol
            body = protocol.parse(raw)
            call = Call(
                request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
                body=body, raw=raw, requested=body["model"], stream=bool(body.get("stream")),
                mode=request_mode(self.config.mode, request.headers), in_headers=request.headers, started=started,
                protocol=protocol,
            )
            bind_call(call)  # traces: the request span's attributes
            router = self.decider.resolve(call)
            if router is not None:
                if call.mode == "observe":
                    self.decider.start(call, router)
                else:
                    await self.decider.decide(call, router)
            if call.stream:
                return await self._stream(call)
            return await self._complete(call)
        except GatewayError as err:
            out = error_response(err)
            if call is not None:
                await self.decider.decided(call)
                self.accounting.finish(call, err.status, completed=False)
                if call.target:
                    out.headers.update(self.accounting.router_headers(call))
            else:
                self.metrics.requests.labels(self.protocol.endpoint, str(err.status)).inc()
            return out
        except Exception:  # a bug: answered 500 by the app's handler, and counted here like every answer
            if call is None or not call.finished:
                self.metrics.requests.labels(self.protocol.endpoint, "500").inc()
            if call is not None:
                call.finished = True
                if call.pending is not None:
                    call.pending.cancel()
            raise
        finally:
            self.metrics.in_flight.dec()

    async def _complete(self, call: Call) -> Response:
        resp, content, model = await self.sender.send_with_fallback(call, stream=False)
        assert content is not None
        await self.decider.decided(call)
        if resp.status_code >= 400:
            return self._client_error(call, model, resp, content)
        data = self.accounting.accept(call, model, resp, content)
        router = call.router
        if router is not None and model == router.cheap_model != router.strong_model:  # a cheap answer
            check = None
            if call.routing and self.config.checks.any:
                check = call.protocol.check(call.body, data, self.config.checks)
            if check is None:
                score = await self._answer_score(call, router, data)
                if score is not None and call.routing and router.answer_score is not None \
                        and router.answer_score.escalate(score):
                    check = CHECK_ANSWER_SCORE
            if check is not None:
                resp, content = await self._escalate(call, router, check, resp, content)
        headers = response_headers(resp.headers)
        headers.update(self.accounting.router_headers(call))
        self.accounting.finish(call, 200)
        self.decider.answered(call, content)  # affinity: remember the model that made its tool calls
        # Shadow grading is offered only once the answer has been sent (a background task).
        after = BackgroundTask(self._offer_shadow, call, content) if self.shadow is not None and call.protocol.shadow else None
        return Response(content, status_code=200, headers=headers, background=after)

    async def _answer_score(self, call: Call, router: Router, data: dict[str, Any]) -> float | None:
        """The cheap answer's score (recorded on the call and observed), when the artifact has one, the
        gateway has not turned it off, the protocol says what the answer's text is and the decision
        has a p_cheap_ok (a rule's or affinity's decision has none), and the answer is text, not tool
        calls; None otherwise. Route mode
        escalates on it; observe mode only logs it."""
        scorer, reader, decision = router.answer_score, call.protocol.answer_text, call.decision
        if (scorer is None or not self.config.answer_score or reader is None or decision is None
                or decision.p_cheap_ok is None):
            return None
        answer = reader(data)
        if answer.tool_calls:  # not scored: see AnswerText
            return None
        p_cheap_ok = float(decision.p_cheap_ok)
        try:  # regular expressions over the whole answer and a graph run: off the event loop
            score = await anyio.to_thread.run_sync(
                lambda: scorer.score(answer.text, p_cheap_ok=p_cheap_ok, finish_reason=answer.finish_reason))
        except Exception as exc:  # noqa: BLE001 - a scoring failure must not fail the answer
            log.warning("request %s: the answer score failed (%s); not scored", call.request_id, exc)
            return None
        call.answer_score = score
        self.metrics.answer_score.labels(call.mode).observe(score)
        return score

    async def _escalate(
        self, call: Call, router: Router, check: str, resp: httpx.Response, content: bytes
    ) -> tuple[httpx.Response, bytes]:
        """Ask the strong model once; its answer if it is good, else (with a warning) the cheap one."""
        call.escalated = check
        self.metrics.escalations.labels(check).inc()
        strong = router.strong_model
        log.info("request %s: the cheap answer failed the %s check; asking %s", call.request_id, check, strong)
        try:
            answer, body = await self.sender.send(call, strong, stream=False)
            assert body is not None
            if answer.status_code != 200:
                call.attempts.append(Attempt(strong, answer.status_code))
                raise UpstreamFailedError(f"the strong model answered {answer.status_code}")
            self.accounting.accept(call, strong, answer, body)
            return answer, body
        except GatewayError as exc:  # the cheap answer is better than none
            log.warning("request %s: escalation failed (%s); returning the cheap answer", call.request_id, exc)
            call.escalated = f"{check}:failed"
            return resp, content

    def _client_error(self, call: Call, model: str, resp: httpx.Response, content: bytes) -> Response:
        attempt = Attempt(model, resp.status_code)
        call.attempts.append(attempt)
        call.final = attempt
        out = client_error(resp, content)
        out.headers.update(self.accounting.router_headers(call))
        self.accounting.finish(call, resp.status_code, completed=False)
        return out

    async def _stream(self, call: Call) -> Response:
        resp, content, model = await self.sender.send_with_fallback(call, stream=True)
        await self.decider.decided(call)
        if resp.status_code != 200:
            return self._client_error(call, model, resp, content or b"")
        attempt = Attempt(model, 200)
        call.attempts.append(attempt)
        call.final = attempt
        reader = self.decider.stream_reader(call)  # affinity: the answer's tool calls, read as they pass

        async def on_close(completed: bool, interrupted: bool, scanner: UsageScanner) -> None:
            attempt.usage = scanner.usage
            attempt.response_model = scanner.model
            self.accounting.record_usage(attempt)
            if interrupted:
                self.metrics.upstream_errors.labels("stream_interrupted").inc()
            elif not completed:
                self.metrics.disconnects.inc()
                log.info("request %s: the client left the stream; upstream request closed", call.request_id)
            self.accounting.finish(call, 200, completed=completed)
            if completed and not interrupted:
                self.decider.answered(call, reader.answer() if reader is not None else None)
                self._offer_shadow(call, None)

        headers = response_headers(resp.headers)
        headers.update(self.accounting.router_headers(call))
        return RelayResponse(resp, on_close, headers, scanner=UsageScanner(
            call.protocol.stream_usage, on_event=reader.feed if reader is not None else None))

    def _offer_shadow(self, call: Call, content: bytes | None) -> None:
        """After a routed answer is complete: hand it to shadow grading (never waits; see ShadowGrader.offer)."""
        router, final = call.router, call.final
        if self.shadow is None or not call.protocol.shadow or router is None or call.decision is None or final is None:
            return
        if final.model not in (router.cheap_model, router.strong_model) or router.cheap_model == router.strong_model:
            return
        tags: tuple[Any, ...] = tuple(request_tags(call.in_headers, call.body) or ())
        self.shadow.offer(ShadowJob(
            body=call.body, tags=tags, all_tags=tuple(all_request_tags(call.in_headers, call.body)),  # drop_tags: every tag
            headers=dict(call.in_headers),
            served_model=final.model, served_content=content, cheap_model=router.cheap_model,
            strong_model=router.strong_model, artifact_version=router.version, mode=call.mode, request_id=call.request_id,
            trace=shadow_trace(call),
        ))
