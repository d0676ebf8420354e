"""The N-model router: the same rules, tokenisation and single graph run, then one model among N.

`Router.load` returns a `MultiRouter` for an artifact of format 2 (a `multi` section). Its graph
returns P(pass) and P(ok) for every model; the artifact's rule (`router_model/multi.py`) picks
the model, optionally among a subset of candidates (the gateway maps a routable name to one).
Rules (image, strong tags, long context) send a request to the best single model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from router_model.artifact import FEATURES_INPUT
from router_model.decision import REASON_CLASSIFIER, RoutingDecision
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.features import request_features
from router_model.multi import choose
from router_model.request import Request, parse_request
from router_model.router import BATCH_SIZE, WARMUP_TEXT, Router


class MultiRouter(Router):
    """A loaded N-model artifact (thread-safe, as Router)."""

    def __init__(self, meta, session, encoder, **kwargs) -> None:
        super().__init__(meta, session, encoder, **kwargs)
        assert meta.multi is not None
        self.multi = meta.multi
        self.models: tuple[str, ...] = meta.multi.models
        self._col = {m: j for j, m in enumerate(self.models)}
        self._best = self._col[meta.multi.best_single]

    def _check_graph(self, graph_file: str) -> None:
        expected = set(self.meta.encoder.model_inputs) | ({FEATURES_INPUT} if self.meta.features else set())
        inputs = {i.name for i in self._session.get_inputs()}
        if inputs != expected:
            raise ArtifactError(f"graph inputs {sorted(inputs)} do not match metadata {sorted(expected)}", file=graph_file)
        outputs = [o.name for o in self._session.get_outputs()]
        if self.multi.output not in outputs:
            raise ArtifactError(f"graph has no {self.multi.output!r} output (has {outputs})", file=graph_file)
        feeds, _ = self._encoder.encode_batch([WARMUP_TEXT])
        probs = self._run_multi(feeds, [WARMUP_TEXT], [16])
        n = len(self.models)
        if probs.shape != (1, 2 * n):
            raise ArtifactError(f"graph returned {probs.shape}, expected (1, {2 * n}) for {n} models", file=graph_file)
        if not np.all(np.isfinite(probs)) or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
            raise ArtifactError(f"graph returned invalid probabilities {probs.tolist()}", file=graph_file)

    # --- scoring -------------------------------------------------------------------------
    def _run_multi(self, feeds: dict[str, np.ndarray], texts: Sequence[str], n_tokens: Sequence[int]) -> np.ndarray:
        if self.meta.features:
            feeds[FEATURES_INPUT] = request_features(texts, n_tokens, self.meta.features)
        return self._session.run([self.multi.output], feeds)[0]

    def _probs(self, parsed, encs, n_tokens) -> tuple[np.ndarray, np.ndarray]:
        """(P(pass), P(ok)) of shape (n, N), in length-sorted batches of one graph run each."""
        n = len(self.models)
        out = np.empty((len(parsed), 2 * n), dtype=np.float64)
        order = sorted(range(len(parsed)), key=lambda i: len(encs[i].ids))
        for k in range(0, len(order), BATCH_SIZE):
            idx = order[k : k + BATCH_SIZE]
            feeds = self._encoder.pad([encs[i] for i in idx])
            out[idx] = self._run_multi(feeds, [parsed[i].classifier_text for i in idx], [n_tokens[i] for i in idx])
        out = np.clip(out, 0.0, 1.0)
        return out[:, :n], out[:, n:]

    def model_probabilities(self, requests: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        """P(pass) and P(ok) per request and model (columns = `models`), rules not applied."""
        parsed = [parse_request(r) for r in requests]
        toks = [self._tokenize(p) for p in parsed]
        if any(e is None for e, _ in toks):
            raise InvalidRequestError("a request has no text for the classifier", field="messages")
        return self._probs(parsed, [e for e, _ in toks], [n for _, n in toks])

    def p_cheap_ok(self, requests: Sequence[Request]) -> np.ndarray:
        """P(the cheapest model loses nothing against every pricier one)."""
        return self.model_probabilities(requests)[1][:, 0]

    def expected_costs(self, n_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, N) expected dollars per call from the artifact's cost models."""
        return np.column_stack([c.estimate(np.asarray(n_tokens, dtype=float)) for c in self.multi.cost_models])

    # --- decisions -----------------------------------------------------------------------
    def allowed(self, candidates: Iterable[str] | None) -> np.ndarray | None:
        """The candidate mask; an unknown name is an InvalidRequestError naming what is known."""
        if candidates is None:
            return None
        names = list(candidates)
        unknown = [m for m in names if m not in self._col]
        if unknown or not names:
            raise InvalidRequestError(f"unknown candidate model(s) {unknown}; this router chooses among {list(self.models)}",
                                      field="candidates")
        mask = np.zeros(len(self.models), dtype=bool)
        mask[[self._col[m] for m in names]] = True
        return mask

    def _route(self, prepared: Sequence, candidates: Iterable[str] | None = None) -> list[RoutingDecision]:
        allow = self.allowed(candidates)
        todo = [i for i, prep in enumerate(prepared) if prep.rule is None]
        n_tok = np.array([prep.n_tokens for prep in prepared], dtype=float)
        est = self.expected_costs(n_tok) if len(prepared) else np.zeros((0, len(self.models)))
        value = self.multi.value
        out: list[RoutingDecision | None] = [None] * len(prepared)
        t = self.meta.threshold
        if todo:
            P, K = self._probs([prepared[i].parsed for i in todo], [prepared[i].enc for i in todo],
                               [prepared[i].n_tokens for i in todo])
            picks = choose(self.multi.policy, value, P, K, est[todo], allow)
            for row, (i, j) in enumerate(zip(todo, picks)):
                p_ok = float(K[row, j])
                margin = None if self.multi.policy == "lambda" else float(
                    (K if self.multi.policy == "cheapest_ok" else P)[row, j] - value)
                out[i] = RoutingDecision(
                    self.models[j], p_ok, p_ok, t, REASON_CLASSIFIER, self.version, prepared[i].n_tokens, margin,
                    p_pass={m: float(P[row, k]) for k, m in enumerate(self.models)},
                    expected_cost_usd=float(est[i, j]),
                )
        fallback = self._best
        if allow is not None and not allow[fallback]:  # a rule's model must be a candidate: the best allowed one
            fallback = int(np.flatnonzero(allow)[-1])
        for i, prep in enumerate(prepared):
            if prep.rule is not None:
                out[i] = RoutingDecision(self.models[fallback], None, 1.0, t, prep.rule, self.version, prep.n_tokens, None,
                                         expected_cost_usd=float(est[i, fallback]))
        return [d for d in out if d is not None]

    def decide(self, prepared: Sequence, candidates: Iterable[str] | None = None) -> list[RoutingDecision]:
        """Router.decide, choosing among `candidates` (all models when None): the batcher's entry point."""
        return self._route(prepared, candidates)

    def predict(self, request: Request, *, tags: Sequence[str] | None = None,
                candidates: Iterable[str] | None = None) -> RoutingDecision:
        """Route one request to one of the models (or of `candidates`)."""
        return self._route([self._prepare(request, tags)], candidates)[0]

    def predict_batch(self, requests: Sequence[Request], *, tags: Sequence[Sequence[str] | None] | None = None,
                      candidates: Iterable[str] | None = None) -> list[RoutingDecision]:
        """Route many requests (same validation and errors as Router.predict_batch)."""
        if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
            raise InvalidRequestError("expected a list of requests", field="requests")
        if tags is not None and len(tags) != len(requests):
            raise InvalidRequestError(f"{len(tags)} tag lists for {len(requests)} requests", field="tags")
        prepared = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(req, tags[i] if tags is not None else None))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=e.field, index=i) from e
        return self._route(prepared, candidates)
