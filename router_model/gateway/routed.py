"""The routed endpoints' one flow: parse -> decide -> forward -> relay -> account.

Chat completions (chat.py) and the Responses API (responses.py) differ only in their `Protocol`
(call.py: the body's checks, its router request form, the upstream path, where `usage` is, the
escalation checks); the steps are the collaborators' (`Decider`, `UpstreamSender`, `Accounting`,
`RelayResponse`). This module owns their order, the escalation of a failed cheap answer (a failed
fast check, or the artifact's learned answer score at or above its threshold: `_answer_score`), and
shadow grading's hand-off once the answer has gone out. Streams are relayed as they come and not
scored, unless `buffer_streams` is on: then a cheap stream is read ahead, scored, and replayed or
escalated (`_buffered_stream`).
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
    AnswerText,
    Attempt,
    Call,
    Protocol,
    StreamAnswer,
    all_request_tags,
    json_bytes,
    read_body,
    request_mode,
    request_tags,
    without_logprobs,
)
from router_model.gateway.config import GatewayConfig
from router_model.gateway.deciding import Decider
from router_model.gateway.errors import GatewayError, UpstreamFailedError
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.relay import Buffered, RelayResponse, UsageScanner, read_ahead
from router_model.gateway.tracing import bind_call, shadow_trace
from router_model.gateway.upstream import UpstreamSender, client_error, response_headers
from router_model.labelling.shadow import ShadowGrader, ShadowJob
from router_model.router import Router

log = logging.getLogger("router_model.gateway")

CHECK_ANSWER_SCORE = "answer_score"  # the escalation "check" of the learned answer score (issue 26)
# --buffer-streams: a cheap stream is read ahead up to this many bytes; a longer one is relayed unscored.
STREAM_BUFFER_BYTES = 4 * 1024 * 1024
# A model whose upstream answered 400 to the `logprobs` the gateway added is not asked for them again
# for this long: one refused call per period, not one per request.
LOGPROBS_REFUSED_S = 600.0


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
        self._logprobs_refused: dict[str, float] = {}  # model -> monotonic time until which it is not asked

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
        call.logprobs_added = self._logprobs_model(call)
        resp, content, model = await self.sender.send_with_fallback(call, stream=False)
        assert content is not None
        if resp.status_code == 400 and model == call.logprobs_added:  # an upstream that refuses `logprobs`?
            log.warning("request %s: %s answered 400 to the request with the logprobs the gateway added; asking "
                        "again as the caller sent it", call.request_id, model)
            call.attempts.append(Attempt(model, 400))
            call.logprobs_added = None
            refused = model
            resp, content, model = await self.sender.send_with_fallback(call, stream=False)
            assert content is not None
            if resp.status_code < 400:  # it was the field, not the caller's request: not asked for a while
                log.warning("%s refuses logprobs: not asking it for them for %.0f s", refused, LOGPROBS_REFUSED_S)
                self._logprobs_refused[refused] = time.monotonic() + LOGPROBS_REFUSED_S
        await self.decider.decided(call)
        if resp.status_code >= 400:
            return self._client_error(call, model, resp, content)
        data = self.accounting.accept(call, model, resp, content)
        shadow_content = content  # shadow grading keeps the log-probabilities the gateway asked for
        if model == call.logprobs_added:
            content = json_bytes(without_logprobs(data))
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
                shadow_content = content
        headers = response_headers(resp.headers)
        headers.update(self.accounting.router_headers(call))
        self.accounting.finish(call, 200)
        self.decider.answered(call, content)  # affinity: remember the model that made its tool calls
        # Shadow grading is offered only once the answer has been sent (a background task).
        after = BackgroundTask(self._offer_shadow, call, shadow_content) \
            if self.shadow is not None and call.protocol.shadow else None
        return Response(content, status_code=200, headers=headers, background=after)

    def _logprobs_model(self, call: Call) -> str | None:
        """The model the gateway asks for token log-probabilities the caller did not ask for: a
        non-streamed call to a pair's cheap model, when its answer score reads them or shadow grading
        keeps them (`shadow.logprobs`), unless its upstream refused them lately (LOGPROBS_REFUSED_S).
        They are stripped from the caller's answer."""
        router = call.router
        if router is None or call.stream or not call.protocol.logprobs or call.asked_logprobs \
                or not call.target or call.target != router.cheap_model or router.cheap_model == router.strong_model:
            return None
        if time.monotonic() < self._logprobs_refused.get(call.target, 0.0):  # refused lately: not asked
            return None
        scorer_reads = router.answer_score is not None and router.answer_score.needs_logprobs and self.config.answer_score
        shadow_keeps = self.shadow is not None and self.shadow.config.logprobs
        return call.target if scorer_reads or shadow_keeps else None

    def _scores(self, call: Call, router: Router) -> bool:
        """Whether the call's cheap answer is scored: the artifact has an answer score, the gateway
        has not turned it off, the protocol says what the answer's text is and the decision has a
        p_cheap_ok (a rule's or affinity's decision has none)."""
        decision = call.decision
        return (router.answer_score is not None and self.config.answer_score and call.protocol.answer_text is not None
                and decision is not None and decision.p_cheap_ok is not None)

    async def _answer_score(self, call: Call, router: Router, data: dict[str, Any]) -> float | None:
        """The cheap answer's score (recorded on the call and observed), when it is scored (`_scores`)
        and the answer is text, not tool calls; None otherwise. Route mode escalates on it; observe
        mode only logs it."""
        reader = call.protocol.answer_text
        if reader is None or not self._scores(call, router):
            return None
        return await self._score_text(call, router, reader(data))

    async def _score_text(self, call: Call, router: Router, answer: AnswerText) -> float | None:
        """Score an answer's text (see `_answer_score`; the caller has checked `_scores`)."""
        scorer, decision = router.answer_score, call.decision
        assert scorer is not None and decision is not None and decision.p_cheap_ok is not None
        if answer.tool_calls:  # not scored: see AnswerText
            return None
        if scorer.needs_logprobs and answer.token_logprobs is None:  # a stream, or an upstream that gave none
            self.metrics.answers_unscored.labels("no_logprobs").inc()
            return None
        p_cheap_ok = float(decision.p_cheap_ok)
        try:  # regular expressions over the whole answer and a graph run: off the event loop
            score = await anyio.to_thread.run_sync(
                lambda: scorer.score(answer.text, p_cheap_ok=p_cheap_ok, finish_reason=answer.finish_reason,
                                     token_logprobs=answer.token_logprobs))
        except Exception as exc:  # noqa: BLE001 - a scoring failure must not fail the answer
            log.warning("request %s: the answer score failed (%s); not scored", call.request_id, exc)
            return None
        call.answer_score = score
        self.metrics.answer_score.labels(call.mode).observe(score)
        return score

    def _begin_escalation(self, call: Call, router: Router, check: str) -> str:
        """Record and count an escalation for `check`; the model to ask (the strong one)."""
        call.escalated = check
        self.metrics.escalations.labels(check).inc()
        strong = router.strong_model
        log.info("request %s: the cheap answer failed the %s check; asking %s", call.request_id, check, strong)
        return strong

    async def _escalate(
        self, call: Call, router: Router, check: str, resp: httpx.Response, content: bytes
    ) -> tuple[httpx.Response, bytes]:
        """Ask the strong model once; its answer if it is good, else (with a warning) the cheap one."""
        strong = self._begin_escalation(call, router, check)
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
        router = call.router
        if router is not None and self._buffers(call, router, model):
            return await self._buffered_stream(call, router, resp, attempt)
        return self._relay(call, resp, attempt, self.decider.stream_reader(call))

    def _relay(self, call: Call, resp: httpx.Response, attempt: Attempt, reader: StreamAnswer | None,
               buffered: Buffered | None = None) -> Response:
        """Relay a 200 stream (`buffered`: its chunks read ahead first) as the call's answer, `attempt`'s."""
        call.final = attempt

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
        if buffered is not None:
            return RelayResponse(resp, on_close, headers, buffered=buffered)
        return RelayResponse(resp, on_close, headers, scanner=UsageScanner(
            call.protocol.stream_usage, on_event=reader.feed if reader is not None else None))

    def _buffers(self, call: Call, router: Router, model: str) -> bool:
        """`--buffer-streams`: a route-mode stream a pair's cheap model answers, whose answer is scored."""
        return (self.config.buffer_streams and call.routing and router.multi is None
                and model == router.cheap_model != router.strong_model
                and call.protocol.stream_answer is not None and self._scores(call, router))

    async def _buffered_stream(self, call: Call, router: Router, resp: httpx.Response, attempt: Attempt) -> Response:
        """Read the cheap stream ahead, sending nothing; score its rebuilt answer, then replay it as
        received, or escalate: relay the strong model's stream instead (the cheap one is paid too).
        A stream that is longer than STREAM_BUFFER_BYTES, broke off or did not end (no last event,
        an error event) is relayed unscored, as it would have been without buffering."""
        reader = self.decider.stream_reader(call)  # affinity's reader of the cheap answer
        factory = call.protocol.stream_answer
        assert factory is not None and call.protocol.answer_text is not None
        rebuilt = factory()

        def on_event(event: Any) -> None:
            rebuilt.feed(event)
            if reader is not None:
                reader.feed(event)

        try:
            buffered = await read_ahead(resp, UsageScanner(call.protocol.stream_usage, on_event=on_event),
                                        STREAM_BUFFER_BYTES)
            if not buffered.whole or not rebuilt.ended:
                why = "is longer than the buffer" if buffered.rest is not None else \
                    "broke off" if buffered.broken else "did not end"
                log.info("request %s: the cheap stream %s; relayed unscored", call.request_id, why)
                return self._relay(call, resp, attempt, reader, buffered)
            answer = rebuilt.answer()
            score = await self._score_text(call, router, call.protocol.answer_text(answer or {}))
            scorer = router.answer_score
            if score is None or scorer is None or not scorer.escalate(score):
                return self._relay(call, resp, attempt, reader, buffered)
            return await self._escalate_stream(call, router, resp, attempt, reader, buffered)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await resp.aclose()
            raise

    async def _escalate_stream(self, call: Call, router: Router, resp: httpx.Response, attempt: Attempt,
                               reader: StreamAnswer | None, buffered: Buffered) -> Response:
        """`_escalate` for a buffered stream: the strong model's stream relayed if it answers 200, else
        (with a warning) the buffered cheap one replayed."""
        check = CHECK_ANSWER_SCORE
        strong = self._begin_escalation(call, router, check)
        try:
            answer, body = await self.sender.send(call, strong, stream=True)
            if answer.status_code != 200:
                call.attempts.append(Attempt(strong, answer.status_code))
                raise UpstreamFailedError(f"the strong model answered {answer.status_code}")
        except GatewayError as exc:  # the cheap answer is better than none
            log.warning("request %s: escalation failed (%s); returning the cheap answer", call.request_id, exc)
            call.escalated = f"{check}:failed"
            return self._relay(call, resp, attempt, reader, buffered)
        # the cheap answer was read to its end: paid, and done with
        attempt.usage = buffered.scanner.usage
        attempt.response_model = buffered.scanner.model
        self.accounting.record_usage(attempt)
        await resp.aclose()
        escalated = Attempt(strong, 200)
        call.attempts.append(escalated)
        try:
            return self._relay(call, answer, escalated, self.decider.stream_reader(call))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await answer.aclose()
            raise

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
