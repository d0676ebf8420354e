"""The router: rules first, then one ONNX graph run, then the artifact's head decides.

One `Router` serves every artifact kind; what differs (a cheap/strong pair, a day-0 policy, N
models) is its `head` (router_model/heads.py), so callers never ask which kind they hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_model.answer_score import AnswerScore
from router_model.artifact import (
    EMBEDDING_OUTPUT,
    FEATURES_INPUT,
    TOKENIZER_FILE,
    ArtifactMetadata,
    read_metadata,
    verify_file,
)
from router_model.decision import (
    REASON_LONG_CONTEXT,
    REASON_VISION,
    TAG_REASON_PREFIX,
    RoutingDecision,
    RoutingRules,
)
from router_model.drift_reference import REFERENCE_FILE, DriftReference, nearest_centroid_distance, read_reference
from router_model.encoder import TextEncoder
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.features import request_features
from router_model.heads import Allowed, MultiHead, PairHead, head_for
from router_model.onnx_session import make_session
from router_model.request import ParsedRequest, Request, has_text, parse_request

log = logging.getLogger(__name__)

BATCH_SIZE = 32
WARMUP_TEXT = "Warm-up request: summarise the following sentence in five words."


def _check_tags(tags: Sequence[str] | None, field: str = "tags") -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Sequence):
        raise InvalidRequestError(f"expected a list of strings, got {type(tags).__name__}", field=field)
    out = []
    for i, t in enumerate(tags):
        if not isinstance(t, str):
            raise InvalidRequestError(f"expected a string, got {type(t).__name__}", field=f"{field}[{i}]")
        out.append(t.strip().lower())
    return tuple(out)


def rule_for(rules: RoutingRules, parsed: ParsedRequest, tags: tuple[str, ...], n_tokens: int) -> str | None:
    """The rule that decides a request before the classifier (None: the classifier decides).

    Module-level so the drift reference (training/artifact/reference.py) applies the same rules.
    """
    if parsed.has_image and rules.image_to_strong:
        return REASON_VISION
    for tag in tags:
        if tag in rules.strong_tags:
            return TAG_REASON_PREFIX + tag
    if rules.max_tokens is not None and n_tokens > rules.max_tokens:
        return REASON_LONG_CONTEXT
    if not has_text(parsed.classifier_text):
        raise InvalidRequestError("the request has no text for the classifier (only images)", field="messages")
    return None


@dataclass(frozen=True)
class _Prepared:
    """One validated request: parsed, tokenised, and the rule that decides it (None = classifier)."""

    parsed: ParsedRequest
    tags: tuple[str, ...]
    enc: Any
    n_tokens: int
    rule: str | None


class Router:
    """A loaded, verified artifact. Thread-safe: onnxruntime sessions may be run concurrently."""

    def __init__(
        self,
        meta: ArtifactMetadata,
        session: Any,
        encoder: TextEncoder,
        *,
        rules: RoutingRules,
        graph: str,
        path: Path,
    ) -> None:
        self.meta = meta
        self._session = session
        self._encoder = encoder
        self.rules = rules
        self.graph = graph
        self.path = path
        self.head: PairHead | MultiHead = head_for(meta)
        # Drift: the artifact's drift reference, and its centroids when the graph exposes the embedding.
        self.drift_reference: DriftReference | None = None
        self._centroids: np.ndarray | None = None
        # The answer-quality score, when the artifact escalates on it (format 3): None otherwise.
        self.answer_score: AnswerScore | None = None

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        graph: str | None = None,
        rules: RoutingRules | None = None,
        threads: int | None = None,
    ) -> Router:
        """Verify and load a model directory; raise ArtifactError naming the file at fault."""
        path = Path(path)
        meta = read_metadata(path)
        graph = graph or meta.default_graph
        if graph not in meta.graphs:
            raise ArtifactError(f"graph {graph!r} not in this artifact; it has {sorted(meta.graphs)}", file="metadata.json")
        graph_file = meta.graphs[graph]
        # Every file the metadata lists, not only the served graph: a directory is whole or refused.
        verified = {name: verify_file(path, name, sha) for name, sha in sorted(meta.files.items())}
        tok_path, graph_path = verified[TOKENIZER_FILE], verified[graph_file]
        try:
            encoder = TextEncoder.from_file(str(tok_path), meta.encoder)
        except Exception as e:
            raise ArtifactError(f"cannot load tokenizer: {e}", file=TOKENIZER_FILE) from e
        try:
            session = make_session(str(graph_path), threads=threads or 1)
        except Exception as e:
            raise ArtifactError(f"onnxruntime cannot load the graph: {e}", file=graph_file) from e
        default_rules = meta.policy.routing_rules() if meta.policy is not None else RoutingRules()
        router = cls(meta, session, encoder, rules=rules or default_rules, graph=graph, path=path)
        if REFERENCE_FILE in meta.files:
            router._use_reference(read_reference(path, meta.files))
        router._check_graph(graph_file)
        esc = meta.escalation
        if esc is not None and esc.on:
            router.answer_score = AnswerScore.load(verified[esc.graph], esc, threads=threads or 1)
        return router

    def _use_reference(self, reference: DriftReference) -> None:
        """Keep the drift reference; distances need the graph's embedding output (older graphs lack it)."""
        self.drift_reference = reference
        has_embedding = EMBEDDING_OUTPUT in {o.name for o in self._session.get_outputs()}
        self._centroids = reference.embedding.centroids if reference.embedding is not None and has_embedding else None

    def _check_graph(self, graph_file: str) -> None:
        expected = set(self.meta.encoder.model_inputs) | ({FEATURES_INPUT} if self.meta.features else set())
        inputs = {i.name: i for i in self._session.get_inputs()}
        if set(inputs) != expected:
            raise ArtifactError(f"graph inputs {sorted(inputs)} do not match metadata {sorted(expected)}", file=graph_file)
        if self.meta.features:
            width = inputs[FEATURES_INPUT].shape[-1]
            if isinstance(width, int) and width != len(self.meta.features):
                raise ArtifactError(
                    f"features input has width {width}, metadata lists {len(self.meta.features)} features", file=graph_file
                )
        outputs = [o.name for o in self._session.get_outputs()]
        if self.head.output not in outputs:
            raise ArtifactError(f"graph has no {self.head.output!r} output (has {outputs})", file=graph_file)
        self.head.check(self._probabilities([WARMUP_TEXT], [16]), graph_file=graph_file)

    # --- properties ----------------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """metadata.json as a plain dict (for JSON output); `meta` is the typed schema."""
        return self.meta.to_dict()

    @property
    def version(self) -> str:
        return self.meta.artifact_version

    @property
    def cheap_model(self) -> str:
        return self.meta.cheap_model

    @property
    def strong_model(self) -> str:
        return self.meta.strong_model

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def models(self) -> tuple[str, ...]:
        """The models this router chooses among, cheapest first (a pair's two, or the N of format 2)."""
        return self.head.models

    @property
    def multi(self) -> Any:
        """The N-model record of a format-2 artifact (None for a pair or a policy)."""
        return self.meta.multi

    @property
    def encoder(self) -> TextEncoder:
        """The artifact's tokenizer (token counts for costing, offline evaluation)."""
        return self._encoder

    def allowed(self, candidates: Iterable[str] | None) -> Allowed:
        """The candidate mask for `candidates`; an unknown or unusable name is an InvalidRequestError."""
        return self.head.allowed(candidates)

    # --- scoring -------------------------------------------------------------------------
    def _probabilities(self, texts: Sequence[str], n_tokens: Sequence[int]) -> np.ndarray:
        """The head's graph output for raw texts (warm-up, parity)."""
        feeds, _ = self._encoder.encode_batch(texts)
        return self._run(feeds, texts, n_tokens)

    def _run(self, feeds: dict[str, np.ndarray], texts: Sequence[str], n_tokens: Sequence[int],
             distances: np.ndarray | None = None) -> np.ndarray:
        """The head's output; with `distances` (one slot per row) and a drift reference, also each
        row's distance to the nearest training centroid, from the embedding of the same graph run."""
        if self.meta.features:
            feeds[FEATURES_INPUT] = request_features(texts, n_tokens, self.meta.features)
        if distances is None or self._centroids is None:
            return self._session.run([self.head.output], feeds)[0]
        probs, emb = self._session.run([self.head.output, EMBEDDING_OUTPUT], feeds)
        distances[:] = nearest_centroid_distance(emb, self._centroids)
        return probs

    def _tokenize(self, parsed: ParsedRequest) -> tuple[Any, int]:
        """Encode the classifier text once; count the full request (same text for a prompt)."""
        if not has_text(parsed.classifier_text):
            return None, self._encoder.count_tokens(parsed.full_text)
        enc, n = self._encoder.encode_one(parsed.classifier_text)
        if parsed.full_text is not parsed.classifier_text:
            n = self._encoder.count_tokens(parsed.full_text)
        return enc, n

    def _outputs(self, prepared: Sequence[_Prepared], distances: np.ndarray | None = None) -> np.ndarray:
        """The head's output per item, in length-sorted batches of one graph run each.

        `distances`, when given, receives each item's centroid distance (NaN without a reference).
        """
        rows: np.ndarray | None = None
        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].enc.ids))
        for k in range(0, len(order), BATCH_SIZE):
            idx = order[k : k + BATCH_SIZE]
            feeds = self._encoder.pad([prepared[i].enc for i in idx])
            buf = None if distances is None else np.full(len(idx), np.nan)
            out = self._run(feeds, [prepared[i].parsed.classifier_text for i in idx], [prepared[i].n_tokens for i in idx], buf)
            if rows is None:
                rows = np.empty((len(prepared), out.shape[1]), dtype=np.float64)
            rows[idx] = out
            if distances is not None and buf is not None:
                distances[idx] = buf
        return rows if rows is not None else np.zeros((0, 0))

    def _prepared_for_scoring(self, requests: Sequence[Request]) -> list[_Prepared]:
        prepared = [self._prepare(r, None) for r in requests]
        if any(p.enc is None for p in prepared):
            raise InvalidRequestError("a request has no text for the classifier", field="messages")
        return prepared

    def p_cheap_ok(self, requests: Sequence[Request]) -> np.ndarray:
        """The classifier's P(the cheapest model loses nothing) per request, rules not applied (evaluation, parity)."""
        return self.head.p_cheap_ok(self._outputs(self._prepared_for_scoring(requests)))

    def model_probabilities(self, requests: Sequence[Request]) -> tuple[np.ndarray, np.ndarray]:
        """N-model routers: P(pass) and P(ok) per request and model (columns = `models`), rules not applied."""
        return self.head.split(self._outputs(self._prepared_for_scoring(requests)))

    def expected_costs(self, n_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """N-model routers: (n, N) expected dollars per call from the artifact's cost models."""
        return self.head.expected_costs(n_tokens)

    # --- decisions -----------------------------------------------------------------------
    def _rule(self, parsed: ParsedRequest, tags: tuple[str, ...], n_tokens: int) -> str | None:
        return rule_for(self.rules, parsed, tags, n_tokens)

    def _prepare(self, request: Request, tags: Sequence[str] | None) -> _Prepared:
        """Validate and tokenise one request; errors name the field relative to the request."""
        parsed = parse_request(request)
        checked = _check_tags(tags)
        enc, n = self._tokenize(parsed)
        return _Prepared(parsed, checked, enc, n, self._rule(parsed, checked, n))

    def _route(self, prepared: Sequence[_Prepared], candidates: Iterable[str] | None = None) -> list[RoutingDecision]:
        """Decisions in order: rules first, the head on the classifier's output for the rest."""
        allow = self.head.allowed(candidates)
        todo = [i for i, prep in enumerate(prepared) if prep.rule is None]
        out: list[RoutingDecision | None] = [None] * len(prepared)
        if todo:
            found = np.full(len(todo), np.nan) if self._centroids is not None else None
            rows = self._outputs([prepared[i] for i in todo], found)
            decided = self.head.decide(rows, [prepared[i].n_tokens for i in todo], allow)
            for k, (i, d) in enumerate(zip(todo, decided)):
                out[i] = replace(d, centroid_distance=float(found[k])) if found is not None else d
        for i, prep in enumerate(prepared):
            if prep.rule is not None:
                out[i] = self.head.rule_decision(prep.rule, prep.n_tokens, allow)
        return [d for d in out if d is not None]

    def predict(self, request: Request, *, tags: Sequence[str] | None = None,
                candidates: Iterable[str] | None = None) -> RoutingDecision:
        """Route one request (a prompt string or OpenAI-style chat messages), among `candidates`
        when given (an N-model router's subset; a pair accepts only its own two).

        An InvalidRequestError names the field relative to the request, with `index` None.
        """
        return self._route([self._prepare(request, tags)], candidates)[0]

    def predict_batch(
        self, requests: Sequence[Request], *, tags: Sequence[Sequence[str] | None] | None = None,
        candidates: Iterable[str] | None = None,
    ) -> list[RoutingDecision]:
        """Route many requests; classifier work is batched by length. Order is preserved.

        An InvalidRequestError about one request carries its position as `index` (for every
        batch size) and its field relative to that request; one about the batch itself
        (not a list, tag lists of the wrong length) has `index` None.
        """
        if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
            raise InvalidRequestError("expected a list of requests", field="requests")
        if tags is not None and len(tags) != len(requests):
            raise InvalidRequestError(f"{len(tags)} tag lists for {len(requests)} requests", field="tags")
        self.head.allowed(candidates)  # a bad candidate set is the batch's error, before any work
        prepared: list[_Prepared] = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(req, tags[i] if tags is not None else None))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=e.field, index=i) from e
        return self._route(prepared, candidates)

    # --- split path, for a dynamic batcher (router_model/batching.py) -------------------------
    def prepare(self, request: Request, *, tags: Sequence[str] | None = None) -> _Prepared:
        """Validate and tokenise one request in the caller's thread (its error stays its own)."""
        return self._prepare(request, tags)

    @staticmethod
    def graph_length(prepared: _Prepared) -> int | None:
        """Padded length this request needs in the graph; None when a rule decides it."""
        return None if prepared.rule is not None else len(prepared.enc.ids)

    def decide(self, prepared: Sequence[_Prepared], candidates: Iterable[str] | None = None) -> list[RoutingDecision]:
        """Decisions for prepared requests, in order, with one graph run per 32 (same as predict_batch)."""
        return self._route(prepared, candidates)
