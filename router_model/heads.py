"""Heads: what turns one graph run's outputs into routing decisions, one kind per artifact kind.

The `Router` owns everything the kinds share (rules, tokenisation, length-sorted batches, the
graph run, drift distances); a head owns only what differs: which graph output it reads, how it
checks the warm-up output, and how a row of it becomes a decision among the models it knows.
Every head accepts `candidates`, so callers never ask which kind of router they hold.

- `PairHead`: a trained cheap/strong router (classes of the outcome, a threshold on p_cheap_ok).
- `PolicyHead`: a day-0 written policy; a pair whose classes are routes, the reason names one.
- `MultiHead`: an N-model router (format 2); the artifact's rule (`router_model/multi.py`)
  chooses among the allowed columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from router_model.artifact import PROBABILITIES_OUTPUT, ArtifactMetadata
from router_model.decision import CHEAP_ONLY_CLASS, POLICY_REASON_PREFIX, REASON_CLASSIFIER, RoutingDecision
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.multi import choose

# A candidate mask over a head's models (None: every model).
Allowed = np.ndarray | None


class Head(Protocol):
    """The per-kind part of a router: read `output`, decide among `models` (cheapest first)."""

    output: str
    models: tuple[str, ...]

    def check(self, probs: np.ndarray, *, graph_file: str) -> None:
        """Refuse a graph whose warm-up output (one row) has the wrong shape or values."""

    def allowed(self, candidates: Iterable[str] | None) -> Allowed:
        """The candidate mask; an unknown or unusable name is an InvalidRequestError."""

    def p_cheap_ok(self, probs: np.ndarray) -> np.ndarray:
        """P(the cheapest model loses nothing), per row, rules not applied."""

    def decide(self, probs: np.ndarray, n_tokens: Sequence[int], allowed: Allowed) -> list[RoutingDecision]:
        """One decision per row of the head's output."""

    def rule_decision(self, reason: str, n_tokens: int, allowed: Allowed) -> RoutingDecision:
        """The decision when a rule (image, tag, long context) decides before the classifier."""


def _finite_probabilities(probs: np.ndarray, *, graph_file: str) -> None:
    if not np.all(np.isfinite(probs)) or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ArtifactError(f"graph returned invalid probabilities {probs.tolist()}", file=graph_file)


class PairHead:
    """A cheap/strong pair: cheap when p_cheap_ok >= threshold."""

    output = PROBABILITIES_OUTPUT

    def __init__(self, meta: ArtifactMetadata) -> None:
        self.meta = meta
        self.models = (meta.cheap_model, meta.strong_model)
        self.threshold = meta.threshold
        self.version = meta.artifact_version
        self._cheap_idx = list(meta.cheap_ok_index)
        # P(only the cheap model passes): the one outcome where the strong model does worse. The
        # joint target models it (probability 0 if the log never had such a row); the binary
        # target does not, and an old artifact does not say.
        self._joint = meta.target == "joint"
        self._cheap_only_idx = meta.classes.index(CHEAP_ONLY_CLASS) if CHEAP_ONLY_CLASS in meta.classes else None

    def check(self, probs: np.ndarray, *, graph_file: str) -> None:
        if probs.shape != (1, len(self.meta.classes)):
            raise ArtifactError(
                f"graph returned probabilities of shape {probs.shape}, expected (1, {len(self.meta.classes)})", file=graph_file
            )
        if not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1.0) > 1e-3:
            raise ArtifactError(f"graph returned invalid probabilities {probs.tolist()}", file=graph_file)

    def allowed(self, candidates: Iterable[str] | None) -> Allowed:
        """A pair chooses between its two models: the only non-empty candidate set is both (a no-op)."""
        if candidates is None:
            return None
        names = list(candidates)
        if not names:
            return None
        pair = list(self.models)
        if set(names) != set(pair):
            unknown = [m for m in names if m not in pair]
            known = f"unknown candidate model(s) {unknown}; " if unknown else ""
            raise InvalidRequestError(
                f"{known}this cheap/strong router chooses between exactly {pair}: leave candidates empty or name "
                "both (choosing among a subset needs an N-model router)", field="candidates",
            )
        return None

    def p_cheap_ok(self, probs: np.ndarray) -> np.ndarray:
        return np.clip(probs[:, self._cheap_idx].sum(axis=1), 0.0, 1.0)

    def _p_strong_ok(self, probs: np.ndarray, p_ok: np.ndarray) -> np.ndarray:
        """P(the strong model does at least as well) = 1 - P(only cheap passes)."""
        if self._cheap_only_idx is not None:
            return np.clip(1.0 - probs[:, self._cheap_only_idx], 0.0, 1.0)
        if self._joint:  # the joint head never saw "only cheap passes": it gives it probability 0
            return np.ones(len(probs))
        return 1.0 - p_ok  # binary target: a lower bound of P(strong >= cheap)

    def _reasons(self, probs: np.ndarray, p_ok: np.ndarray) -> list[str]:
        return [REASON_CLASSIFIER] * len(probs)

    def decide(self, probs: np.ndarray, n_tokens: Sequence[int], allowed: Allowed) -> list[RoutingDecision]:
        """The decision and its confidence: the calibrated probability that the chosen model does at
        least as well as the other (cheap: p_cheap_ok; strong: 1 - P(only cheap passes))."""
        p_ok = self.p_cheap_ok(probs)
        p_strong = self._p_strong_ok(probs, p_ok)
        t = self.threshold
        out = []
        for p, ps, reason, n in zip(p_ok.tolist(), p_strong.tolist(), self._reasons(probs, p_ok), n_tokens):
            cheap = p >= t
            out.append(RoutingDecision(
                self.models[0] if cheap else self.models[1], p, p if cheap else ps, t, reason, self.version, int(n), p - t,
            ))
        return out

    def rule_decision(self, reason: str, n_tokens: int, allowed: Allowed) -> RoutingDecision:
        return RoutingDecision(self.models[1], None, 1.0, self.threshold, reason, self.version, n_tokens, None)

    def split(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-model P(pass) and P(ok): an N-model notion; a pair's classes are outcomes, not models."""
        raise InvalidRequestError("per-model probabilities need an N-model router (artifact format 2)", field="router")

    def expected_costs(self, n_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-model dollars: an N-model notion (a pair is priced by the caller's price table)."""
        raise InvalidRequestError("expected costs need an N-model router (artifact format 2)", field="router")


class PolicyHead(PairHead):
    """A day-0 policy: its classes are routes; the reason names the likeliest route of the chosen tier."""

    def __init__(self, meta: ArtifactMetadata) -> None:
        super().__init__(meta)
        self._strong_idx = [i for i in range(len(meta.classes)) if i not in self._cheap_idx]

    def _reasons(self, probs: np.ndarray, p_ok: np.ndarray) -> list[str]:
        classes = self.meta.classes
        out = []
        for row, p in zip(probs, p_ok):
            cols = self._cheap_idx if p >= self.threshold else self._strong_idx
            out.append(POLICY_REASON_PREFIX + classes[max(cols, key=lambda c: row[c])])
        return out


class MultiHead:
    """N models: P(pass) and P(ok) per model (columns cheapest first), the artifact's rule chooses."""

    def __init__(self, meta: ArtifactMetadata) -> None:
        assert meta.multi is not None
        self.meta = meta
        self.multi = meta.multi
        self.output = meta.multi.output
        self.models: tuple[str, ...] = meta.multi.models
        self.version = meta.artifact_version
        self._col = {m: j for j, m in enumerate(self.models)}
        self._best = self._col[meta.multi.best_single]

    def check(self, probs: np.ndarray, *, graph_file: str) -> None:
        n = len(self.models)
        if probs.shape != (1, 2 * n):
            raise ArtifactError(f"graph returned {probs.shape}, expected (1, {2 * n}) for {n} models", file=graph_file)
        _finite_probabilities(probs, graph_file=graph_file)

    def allowed(self, candidates: Iterable[str] | None) -> Allowed:
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

    def split(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(pass), P(ok)), each of shape (n, N)."""
        n = len(self.models)
        probs = np.clip(probs, 0.0, 1.0)
        return probs[:, :n], probs[:, n:]

    def p_cheap_ok(self, probs: np.ndarray) -> np.ndarray:
        return self.split(probs)[1][:, 0]

    def expected_costs(self, n_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, N) expected dollars per call from the artifact's cost models."""
        return np.column_stack([c.estimate(np.asarray(n_tokens, dtype=float)) for c in self.multi.cost_models])

    def decide(self, probs: np.ndarray, n_tokens: Sequence[int], allowed: Allowed) -> list[RoutingDecision]:
        P, K = self.split(probs)
        est = self.expected_costs(n_tokens) if len(n_tokens) else np.zeros((0, len(self.models)))
        value, kind = self.multi.value, self.multi.rule
        picks = choose(kind, value, P, K, est, allowed)
        out = []
        for row, j in enumerate(picks):
            p_ok = float(K[row, j])
            margin = None if kind == "lambda" else float((K if kind == "cheapest_ok" else P)[row, j] - value)
            out.append(RoutingDecision(
                self.models[j], p_ok, p_ok, self.meta.threshold, REASON_CLASSIFIER, self.version, int(n_tokens[row]), margin,
                p_pass={m: float(P[row, k]) for k, m in enumerate(self.models)},
                expected_cost_usd=float(est[row, j]),
            ))
        return out

    def rule_decision(self, reason: str, n_tokens: int, allowed: Allowed) -> RoutingDecision:
        """A rule sends the request to the best single model (the best allowed one under candidates)."""
        col = self._best
        if allowed is not None and not allowed[col]:
            col = int(np.flatnonzero(allowed)[-1])
        cost = float(self.expected_costs([n_tokens])[0, col])
        return RoutingDecision(self.models[col], None, 1.0, self.meta.threshold, reason, self.version, n_tokens, None,
                               expected_cost_usd=cost)


def head_for(meta: ArtifactMetadata) -> PairHead | MultiHead:
    """The head of an artifact kind: N-model (format 2), day-0 policy, or a trained pair."""
    if meta.multi is not None:
        return MultiHead(meta)
    if meta.policy is not None:
        return PolicyHead(meta)
    return PairHead(meta)
