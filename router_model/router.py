"""The router: rules first, then one ONNX graph from token ids to a calibrated probability."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import (
    EMBEDDING_OUTPUT,
    FEATURES_INPUT,
    PROBABILITIES_OUTPUT,
    TOKENIZER_FILE,
    ArtifactMetadata,
    read_metadata,
    verify_file,
)
from router_model.decision import (
    CHEAP_ONLY_CLASS,
    POLICY_REASON_PREFIX,
    REASON_CLASSIFIER,
    REASON_LONG_CONTEXT,
    REASON_VISION,
    TAG_REASON_PREFIX,
    RoutingDecision,
    RoutingRules,
)
from router_model.encoder import TextEncoder
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.features import request_features
from router_model.observe.drift import REFERENCE_FILE, DriftReference, nearest_centroid_distance, read_reference
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
        session,
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
        self._cheap_idx = list(meta.cheap_ok_index)
        # P(only the cheap model passes): the one outcome where the strong model does worse. The
        # joint target models it (probability 0 if the log never had such a row); the binary target
        # does not, and an old artifact does not say (see `_scores`).
        self._joint = meta.target == "joint"
        self._cheap_only_idx = meta.classes.index(CHEAP_ONLY_CLASS) if CHEAP_ONLY_CLASS in meta.classes else None
        # A day-0 policy's classes are its routes: the decision's reason names the likeliest route of the chosen tier.
        self._strong_idx = [i for i in range(len(meta.classes)) if i not in self._cheap_idx] if meta.policy else None
        # Drift: the artifact's drift reference, and its centroids when the graph exposes the embedding.
        self.drift_reference: DriftReference | None = None
        self._centroids: np.ndarray | None = None

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
        from router_model.onnx_session import make_session

        path = Path(path)
        meta = read_metadata(path)
        if meta.multi is not None and cls is Router:  # an N-model artifact (format 2)
            from router_model.multi_router import MultiRouter

            return MultiRouter.load(path, graph=graph, rules=rules, threads=threads)
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
        if PROBABILITIES_OUTPUT not in outputs:
            raise ArtifactError(f"graph has no {PROBABILITIES_OUTPUT!r} output (has {outputs})", file=graph_file)
        probs = self._probabilities([WARMUP_TEXT], [16])
        if probs.shape != (1, len(self.meta.classes)):
            raise ArtifactError(
                f"graph returned probabilities of shape {probs.shape}, expected (1, {len(self.meta.classes)})", file=graph_file
            )
        if not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1.0) > 1e-3:
            raise ArtifactError(f"graph returned invalid probabilities {probs.tolist()}", file=graph_file)

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

    # --- scoring -------------------------------------------------------------------------
    def _probabilities(self, texts: Sequence[str], n_tokens: Sequence[int]) -> np.ndarray:
        feeds, _ = self._encoder.encode_batch(texts)
        return self._run(feeds, texts, n_tokens)

    def _run(self, feeds: dict[str, np.ndarray], texts: Sequence[str], n_tokens: Sequence[int],
             distances: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities; with `distances` (one slot per row) and a drift reference, also each
        row's distance to the nearest training centroid, from the embedding of the same graph run."""
        if self.meta.features:
            feeds[FEATURES_INPUT] = request_features(texts, n_tokens, self.meta.features)
        if distances is None or self._centroids is None:
            return self._session.run([PROBABILITIES_OUTPUT], feeds)[0]
        probs, emb = self._session.run([PROBABILITIES_OUTPUT, EMBEDDING_OUTPUT], feeds)
        distances[:] = nearest_centroid_distance(emb, self._centroids)
        return probs

    def _tokenize(self, parsed: ParsedRequest):
        """Encode the classifier text once; count the full request (same text for a prompt)."""
        if not has_text(parsed.classifier_text):
            return None, self._encoder.count_tokens(parsed.full_text)
        enc, n = self._encoder.encode_one(parsed.classifier_text)
        if parsed.full_text is not parsed.classifier_text:
            n = self._encoder.count_tokens(parsed.full_text)
        return enc, n

    def _scores(
        self, parsed: Sequence[ParsedRequest], encs: Sequence, n_tokens: Sequence[int], distances: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(p_cheap_ok, p_strong_ok, reason) per item, in length-sorted batches.

        p_strong_ok = P(the strong model does at least as well) = 1 - P(only cheap passes).
        `distances`, when given, receives each item's centroid distance (NaN without a reference).
        """
        p_ok = np.empty(len(parsed), dtype=np.float64)
        p_strong = np.empty(len(parsed), dtype=np.float64)
        reasons = [REASON_CLASSIFIER] * len(parsed)
        order = sorted(range(len(parsed)), key=lambda i: len(encs[i].ids))
        for k in range(0, len(order), BATCH_SIZE):
            idx = order[k : k + BATCH_SIZE]
            feeds = self._encoder.pad([encs[i] for i in idx])
            buf = None if distances is None else np.full(len(idx), np.nan)
            probs = self._run(feeds, [parsed[i].classifier_text for i in idx], [n_tokens[i] for i in idx], buf)
            if distances is not None:
                distances[idx] = buf
            p_ok[idx] = probs[:, self._cheap_idx].sum(axis=1)
            if self._cheap_only_idx is not None:
                p_strong[idx] = 1.0 - probs[:, self._cheap_only_idx]
            elif self._joint:  # the joint head never saw "only cheap passes": it gives it probability 0
                p_strong[idx] = 1.0
            else:  # binary target: P(strong needed) = 1 - p_cheap_ok, a lower bound of P(strong >= cheap)
                p_strong[idx] = 1.0 - p_ok[idx]
            if self._strong_idx is not None:
                for row, i in zip(probs, idx):
                    cols = self._cheap_idx if p_ok[i] >= self.meta.threshold else self._strong_idx
                    reasons[i] = POLICY_REASON_PREFIX + self.meta.classes[max(cols, key=lambda c: row[c])]
        return np.clip(p_ok, 0.0, 1.0), np.clip(p_strong, 0.0, 1.0), reasons

    def p_cheap_ok(self, requests: Sequence[Request]) -> np.ndarray:
        """The classifier's p_cheap_ok for each request, rules not applied (evaluation, parity)."""
        parsed = [parse_request(r) for r in requests]
        toks = [self._tokenize(p) for p in parsed]
        if any(e is None for e, _ in toks):
            raise InvalidRequestError("a request has no text for the classifier", field="messages")
        return self._scores(parsed, [e for e, _ in toks], [n for _, n in toks])[0]

    # --- decisions -----------------------------------------------------------------------
    def _rule(self, parsed: ParsedRequest, tags: tuple[str, ...], n_tokens: int) -> str | None:
        return rule_for(self.rules, parsed, tags, n_tokens)

    def _prepare(self, request: Request, tags: Sequence[str] | None) -> _Prepared:
        """Validate and tokenise one request; errors name the field relative to the request."""
        parsed = parse_request(request)
        checked = _check_tags(tags)
        enc, n = self._tokenize(parsed)
        return _Prepared(parsed, checked, enc, n, self._rule(parsed, checked, n))

    def _decide(self, p: float | None, reason: str | None, n_tokens: int, p_strong: float | None = None,
                scored_reason: str = REASON_CLASSIFIER) -> RoutingDecision:
        """The decision and its confidence: the calibrated probability that the chosen model does at
        least as well as the other (cheap: p_cheap_ok; strong: 1 - P(only cheap passes))."""
        t = self.meta.threshold
        if reason is not None:
            return RoutingDecision(self.strong_model, None, 1.0, t, reason, self.version, n_tokens, None)
        assert p is not None
        cheap = p >= t
        return RoutingDecision(
            self.cheap_model if cheap else self.strong_model,
            p,
            p if cheap else (p_strong if p_strong is not None else 1.0 - p),
            t,
            scored_reason,
            self.version,
            n_tokens,
            p - t,
        )

    def _route(self, prepared: Sequence[_Prepared]) -> list[RoutingDecision]:
        """Decisions in order: rules first, the classifier for the rest in length-sorted batches."""
        todo = [i for i, prep in enumerate(prepared) if prep.rule is None]
        p_ok: dict[int, float] = {}
        p_strong: dict[int, float] = {}
        why: dict[int, str] = {}
        dist: dict[int, float] = {}
        if todo:
            found = np.full(len(todo), np.nan) if self._centroids is not None else None
            ok, strong, reasons = self._scores(
                [prepared[i].parsed for i in todo], [prepared[i].enc for i in todo], [prepared[i].n_tokens for i in todo],
                found,
            )
            dist = {i: float(v) for i, v in zip(todo, found)} if found is not None else {}
            p_ok = {i: float(v) for i, v in zip(todo, ok)}
            p_strong = {i: float(v) for i, v in zip(todo, strong)}
            why = dict(zip(todo, reasons))
        decided = [self._decide(p_ok.get(i), prep.rule, prep.n_tokens, p_strong.get(i), why.get(i, REASON_CLASSIFIER))
                   for i, prep in enumerate(prepared)]
        return [replace(d, centroid_distance=dist[i]) if i in dist else d for i, d in enumerate(decided)]

    def predict(self, request: Request, *, tags: Sequence[str] | None = None) -> RoutingDecision:
        """Route one request (a prompt string or OpenAI-style chat messages).

        An InvalidRequestError names the field relative to the request, with `index` None.
        """
        return self._route([self._prepare(request, tags)])[0]

    def predict_batch(
        self, requests: Sequence[Request], *, tags: Sequence[Sequence[str] | None] | None = None
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
        prepared: list[_Prepared] = []
        for i, req in enumerate(requests):
            try:
                prepared.append(self._prepare(req, tags[i] if tags is not None else None))
            except InvalidRequestError as e:
                raise InvalidRequestError(e.reason, field=e.field, index=i) from e
        return self._route(prepared)

    # --- split path, for a dynamic batcher (router_model/batching.py) -------------------------
    def prepare(self, request: Request, *, tags: Sequence[str] | None = None) -> _Prepared:
        """Validate and tokenise one request in the caller's thread (its error stays its own)."""
        return self._prepare(request, tags)

    @staticmethod
    def graph_length(prepared: _Prepared) -> int | None:
        """Padded length this request needs in the graph; None when a rule decides it."""
        return None if prepared.rule is not None else len(prepared.enc.ids)

    def decide(self, prepared: Sequence[_Prepared]) -> list[RoutingDecision]:
        """Decisions for prepared requests, in order, with one graph run per 32 (same as predict_batch)."""
        return self._route(prepared)
