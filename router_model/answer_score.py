"""The answer-quality score on the serving path: a cheap answer -> P(it fails where the strong one passes).

A small ONNX graph (`answer_score.onnx`, written by training/escalation_export.py) over the
features of router_model/answer_features.py and the router's own logit of P(cheap ok), so the
score knows how hard the prompt looked before the answer came back. The gateway asks the strong
model when the score reaches the certified `answer_threshold` (docs/guarantee.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_model.answer_features import ANSWER_FEATURES, FEATURE_VERSION, LOGPROB_FEATURES, answer_features, logprob_features
from router_model.artifact_records import EscalationRecord
from router_model.errors import ArtifactError
from router_model.onnx_session import make_session

ANSWER_SCORE_FILE = "answer_score.onnx"
SCORE_INPUT = "features"
SCORE_OUTPUT = "p_escalate"
PROMPT_FEATURE = "logit_p_cheap_ok"
# The wait an escalation adds is the cheap answer's generation time. Logs hold no latencies, so
# reports estimate it from the answer's output tokens with these stated assumptions.
ASSUMED_FIRST_TOKEN_S = 0.4
ASSUMED_TOKENS_PER_S = 150.0
SCORE_FEATURES: tuple[str, ...] = (*ANSWER_FEATURES, PROMPT_FEATURE)
# A score trained on a log that kept the cheap answers' token log-probabilities reads them too.
SCORE_FEATURES_WITH_LOGPROBS: tuple[str, ...] = (*SCORE_FEATURES, *LOGPROB_FEATURES)
_P_CLIP = 1e-4


def prompt_logit(p_cheap_ok: float) -> float:
    """The router's P(cheap ok) as a logit, clipped: the score's prompt-side feature."""
    p = min(max(float(p_cheap_ok), _P_CLIP), 1.0 - _P_CLIP)
    return math.log(p / (1.0 - p))


def estimated_wait_s(output_tokens: np.ndarray) -> np.ndarray:
    """Seconds an escalated request waits for the cheap answer first (ASSUMED_* above, not measured)."""
    return ASSUMED_FIRST_TOKEN_S + np.asarray(output_tokens, dtype=float) / ASSUMED_TOKENS_PER_S


class MissingLogprobsError(ValueError):
    """The answer score reads token log-probabilities and the answer came without them."""


def reads_logprobs(features: Sequence[str]) -> bool:
    """Whether a score with these features (an EscalationRecord's) reads token log-probabilities."""
    return tuple(features) == SCORE_FEATURES_WITH_LOGPROBS


def score_features(answer: str, *, p_cheap_ok: float, finish_reason: str | None = None,
                   token_logprobs: Sequence[float] | None = None) -> np.ndarray:
    """One row of the score's input: the answer's features, the prompt's logit, then (when given)
    the token log-probabilities' features."""
    row = np.append(answer_features(answer, finish_reason=finish_reason), np.float32(prompt_logit(p_cheap_ok)))
    return row if token_logprobs is None else np.append(row, logprob_features(token_logprobs))


class AnswerScore:
    """The loaded graph and the certified threshold; `escalate` is what the gateway asks."""

    def __init__(self, record: EscalationRecord, session: object) -> None:
        self.record = record
        self._session = session

    @classmethod
    def load(cls, path: Path, record: EscalationRecord, *, threads: int = 1) -> AnswerScore:
        """Load the verified graph; refuse one whose features this version does not compute."""
        if record.feature_version != FEATURE_VERSION or tuple(record.features) not in (SCORE_FEATURES,
                                                                                        SCORE_FEATURES_WITH_LOGPROBS):
            raise ArtifactError(
                f"answer score features v{record.feature_version} {list(record.features)} are not this "
                f"router-model's v{FEATURE_VERSION}; retrain or upgrade", file=record.graph)
        try:
            session = make_session(str(path), threads=threads)
        except Exception as e:
            raise ArtifactError(f"onnxruntime cannot load the answer-score graph: {e}", file=record.graph) from e
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if set(inputs) != {SCORE_INPUT} or SCORE_OUTPUT not in outputs:
            raise ArtifactError(f"answer-score graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                                f"expected {SCORE_INPUT} -> {SCORE_OUTPUT}", file=record.graph)
        width = inputs[SCORE_INPUT].shape[-1]
        if isinstance(width, int) and width != len(record.features):
            raise ArtifactError(f"answer-score graph takes {width} features, expected {len(record.features)}",
                                file=record.graph)
        return cls(record, session)

    @property
    def threshold(self) -> float:
        assert self.record.answer_threshold is not None
        return self.record.answer_threshold

    @property
    def needs_logprobs(self) -> bool:
        """The score reads the answer's token log-probabilities (the gateway asks the cheap model for them)."""
        return reads_logprobs(self.record.features)

    def _logprobs_for(self, token_logprobs: Sequence[float] | None) -> Sequence[float] | None:
        """The log-probabilities this score reads: refused when it needs them and none came, dropped when it does not."""
        if not self.needs_logprobs:
            return None
        if token_logprobs is None:
            raise MissingLogprobsError("this answer score reads the answer's token log-probabilities and it has none")
        return token_logprobs

    def score_matrix(self, features: np.ndarray) -> np.ndarray:
        """P(escalate) for each row of a (n, len(record.features)) matrix."""
        out = self._session.run([SCORE_OUTPUT], {SCORE_INPUT: np.asarray(features, dtype=np.float32)})  # type: ignore[attr-defined]
        return np.asarray(out[0], dtype=float).reshape(-1)

    def score_answers(self, answers: list[str], p_cheap_ok: np.ndarray, *,
                      token_logprobs: Sequence[Sequence[float] | None] | None = None) -> np.ndarray:
        """P(escalate) for many answers (a labelled log's cheap answers, with the router's p)."""
        if not answers:
            return np.zeros(0)
        logprobs = token_logprobs if token_logprobs is not None else [None] * len(answers)
        rows = np.stack([score_features(a, p_cheap_ok=float(p), token_logprobs=self._logprobs_for(t))
                         for a, p, t in zip(answers, p_cheap_ok, logprobs)])
        return self.score_matrix(rows)

    def score(self, answer: str, *, p_cheap_ok: float, finish_reason: str | None = None,
              token_logprobs: Sequence[float] | None = None) -> float:
        """P(this cheap answer fails where the strong model would pass); MissingLogprobsError when the
        score reads token log-probabilities (`needs_logprobs`) and none are given."""
        row = score_features(answer, p_cheap_ok=p_cheap_ok, finish_reason=finish_reason,
                             token_logprobs=self._logprobs_for(token_logprobs))
        return float(self.score_matrix(row[None, :])[0])

    def escalate(self, score: float) -> bool:
        """Whether a cheap answer with this score goes to the strong model (the certified rule)."""
        return score >= self.threshold
