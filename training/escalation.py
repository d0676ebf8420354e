"""Route, then escalate: an answer-quality score and the joint certificate (docs/guarantee.md).

When the labelled log kept the cheap model's answers (`router-label` and shadow grading do by
default), router-train fits a second head: P(the cheap answer fails where the strong one passes)
from the answer's simple features (router_model/answer_features.py) and the router's own
P(cheap ok). Two candidate families then compete under the same floor, each a fixed sequence
tested at half the risk (a union bound over the two, so the served one is certified at the
goal's risk whichever wins):

  route    today's router, no escalation: cheap iff p >= t, t walked down from the safe end;
  cascade  every request tries the cheap model first and its answer goes to the strong model
           when the score is >= u, u walked down from "escalate everything" (the safe end:
           always-strong quality at the cost of both calls).

The served quality of the cascade is that of the answer returned (the strong one when
escalated), so its per-request Z is the pair's with "kept cheap" in place of "routed cheap",
and the betting (or Clopper-Pearson) test applies unchanged. The cheaper certified family on the
labelled rows wins; escalation is on only when the cascade wins, so the report says plainly
whether it pays on this log. Escalation needs a quality-floor goal with a risk; the answer score
is cross-fitted over the same folds as the router's scores (the same assumption as
`--threshold-rows oof`). Under `--threshold-rows all`, route against cascade is certified again on
every labelled row after the held-out evaluation (`on_every_row`).

When the log kept the cheap answers' token log-probabilities on every row (`router-label
--logprobs`, shadow `logprobs: true`), the score reads them too (LOGPROB_FEATURES); on some rows
only, they are left out and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from router_model.answer_features import FEATURE_VERSION, answer_feature_matrix, logprob_feature_matrix
from router_model.answer_score import (
    ANSWER_SCORE_FILE,
    SCORE_FEATURES,
    SCORE_FEATURES_WITH_LOGPROBS,
    prompt_logit,
    reads_logprobs,
)
from router_model.artifact_records import EscalationRecord
from training.risk import ALL_STRONG, certify_quality_floor, effective_certificate, method_for
from training.threshold import Goal, ThresholdChoice, ThresholdStage, every_row_stage

ESCALATION_MODES = ("auto", "off")
FAMILIES = ("route", "cascade")
SCORE_C = 1.0  # the logistic head's inverse regularisation (15 + 1 standardised features)
_EPS = 1e-9


@dataclass(frozen=True)
class AnswerScoreHead:
    """sigmoid(((x - mean) / scale) . coef + intercept): what the exported graph computes."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = ((np.asarray(features, dtype=float) - self.mean) / self.scale) @ self.coef + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=float)


Logprobs = Sequence[Sequence[float] | None]  # per row: the cheap answer's token log-probabilities (None: not kept)


def score_matrix(answers: Sequence[str], p_cheap_ok: np.ndarray, *,
                 token_logprobs: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """The score's inputs for many answers: answer features, the prompt's logit (SCORE_FEATURES),
    then, when given, the token log-probabilities' features (SCORE_FEATURES_WITH_LOGPROBS)."""
    base = with_prompt_logit(answer_feature_matrix(list(answers)), p_cheap_ok)
    if token_logprobs is None:
        return base
    return np.column_stack([base, logprob_feature_matrix(token_logprobs)]).astype(np.float32)


def with_prompt_logit(answer_features: np.ndarray, p_cheap_ok: np.ndarray) -> np.ndarray:
    """score_matrix from answer features computed once (they do not depend on the router's scores)."""
    logits = np.array([prompt_logit(p) for p in p_cheap_ok], dtype=np.float32)
    return np.column_stack([answer_features, logits]).astype(np.float32)


def fit_answer_head(features: np.ndarray, target: np.ndarray, *, seed: int = 0) -> AnswerScoreHead:
    """A standardised logistic regression of target (cheap fails, strong passes) on the features."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(features, dtype=float)
    y = np.asarray(target, dtype=int)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    if len(np.unique(y)) < 2:  # nothing to learn: a constant score at the observed rate
        rate = float(np.clip(y.mean() if len(y) else 0.0, 1e-4, 1 - 1e-4))
        return AnswerScoreHead(mean, scale, np.zeros(X.shape[1]), math.log(rate / (1 - rate)))
    model = LogisticRegression(C=SCORE_C, max_iter=2000, random_state=seed).fit((X - mean) / scale, y)
    return AnswerScoreHead(mean, scale, model.coef_[0].astype(float), float(model.intercept_[0]))


def cross_fitted_scores(features: np.ndarray, target: np.ndarray, *,
                        folds: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> np.ndarray:
    """Each row's score from a head fitted without its fold (the folds of the router's scores)."""
    q = np.zeros(len(target))
    for train_idx, test_idx in folds:
        q[test_idx] = fit_answer_head(features[train_idx], target[train_idx], seed=seed).predict(features[test_idx])
    return q


@dataclass(frozen=True)
class Candidate:
    """One family's certified point (or its failure) and what it does on the labelled rows."""

    family: str
    certified: bool
    threshold: float  # routing: cheap iff p >= threshold (cascade: 0.0, every request cheap first)
    answer_threshold: float | None  # cascade: escalate iff score >= this
    bound: float | None
    method: str
    cost_vs_strong: float  # mean cost / always-strong's, on the labelled rows
    quality_vs_strong: float
    cheap_share: float  # requests that try the cheap model
    escalated_share: float  # requests whose cheap answer goes to the strong model

    def to_dict(self) -> dict[str, object]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def served(p: np.ndarray, q: np.ndarray, *, threshold: float, answer_threshold: float | None,
           cheap_passed: np.ndarray, strong_passed: np.ndarray, cost_cheap: np.ndarray,
           cost_strong: np.ndarray) -> dict[str, float]:
    """Quality and cost of route-then-escalate on rows (the answer returned is the strong one when escalated)."""
    cheap = p >= threshold
    escalated = cheap & (q >= answer_threshold) if answer_threshold is not None else np.zeros(len(p), dtype=bool)
    kept = cheap & ~escalated
    quality = float(np.where(kept, cheap_passed, strong_passed).mean())
    cost = float((np.where(cheap, cost_cheap, 0.0) + np.where(kept, 0.0, cost_strong)).mean())
    strong_q, strong_cost = float(strong_passed.mean()), float(cost_strong.mean())
    return {"quality_vs_strong": quality / strong_q if strong_q > 0 else 0.0,
            "cost_vs_strong": cost / strong_cost if strong_cost > 0 else 0.0,
            "cheap_share": float(cheap.mean()), "escalated_share": float(escalated.mean())}


def certify_route_and_escalate(p: np.ndarray, q: np.ndarray, *, cheap_passed: np.ndarray, strong_passed: np.ndarray,
                               cost_cheap: np.ndarray, cost_strong: np.ndarray, floor: float, risk: float,
                               certificate: str) -> tuple[Candidate | None, tuple[Candidate, ...]]:
    """Both families at risk / 2 each; the cheaper certified one on these rows (None: neither)."""
    outcomes = {"cheap_passed": cheap_passed, "strong_passed": strong_passed}
    costs = {"cost_cheap": cost_cheap, "cost_strong": cost_strong}
    half = risk / len(FAMILIES)
    candidates = []
    route = certify_quality_floor(p, **outcomes, floor=floor, risk=half, certificate=certificate)
    candidates.append(Candidate("route", route.certified, route.threshold, None, route.bound, route.method,
                                **served(p, q, threshold=route.threshold, answer_threshold=None, **outcomes, **costs)))
    # The cascade's "kept cheap" rows are those with the lowest score: the same test on 1 - q.
    cascade = certify_quality_floor(1.0 - q, **outcomes, floor=floor, risk=half, certificate=certificate)
    u = min(1.0, 1.0 - cascade.threshold + _EPS) if cascade.threshold < ALL_STRONG else 0.0
    candidates.append(Candidate("cascade", cascade.certified, 0.0, u, cascade.bound, cascade.method,
                                **served(p, q, threshold=0.0, answer_threshold=u, **outcomes, **costs)))
    certified = [c for c in candidates if c.certified]
    best = min(certified, key=lambda c: (c.cost_vs_strong, FAMILIES.index(c.family))) if certified else None
    return best, tuple(candidates)


@dataclass(frozen=True)
class EscalationStage:
    """What the pipeline serves: the record, and (when on) the head to export and the routing threshold."""

    record: EscalationRecord
    head: AnswerScoreHead | None = None
    chosen: Candidate | None = None  # the winning family's point (route or cascade); None: none certified
    fit_features: np.ndarray | None = None  # the rows the head was fitted on (the export's parity check)
    scores: np.ndarray | None = None  # the cross-fitted answer scores of the labelled rows

    @property
    def reads_logprobs(self) -> bool:
        return reads_logprobs(self.record.features)


def off(reason: str) -> EscalationStage:
    return EscalationStage(EscalationRecord(on=False, reason=reason))


def logprobs_on_every_row(token_logprobs: Logprobs | None, n: int) -> tuple[list[Sequence[float]] | None, str]:
    """(the rows' log-probabilities when every row kept them, else None; a note when some did)."""
    got = [t for t in (token_logprobs or ()) if t is not None]
    if n and len(got) == n:
        return got, "; the score reads the cheap answers' token log-probabilities"
    if got:
        return None, (f"; token log-probabilities on {len(got)} of {n} cheap answers are left out (the score "
                      "reads them only when every row kept them)")
    return None, ""


def escalation_stage(*, answers: Sequence[str | None], p_oof: np.ndarray, cheap_passed: np.ndarray,
                     strong_passed: np.ndarray, cost_cheap: np.ndarray, cost_strong: np.ndarray,
                     folds: Sequence[tuple[np.ndarray, np.ndarray]], floor: float, risk: float, certificate: str,
                     seed: int = 0, token_logprobs: Logprobs | None = None) -> EscalationStage:
    """Fit the answer score on the labelled rows, cross-fit it, and certify route against cascade."""
    missing = sum(a is None for a in answers)
    if missing:
        return off(f"{missing} of {len(answers)} labelled rows lack the cheap model's answer "
                   "(router-label and shadow grading keep it unless told not to)")
    texts = [a or "" for a in answers]
    target = ((cheap_passed < 0.5) & (strong_passed >= 0.5)).astype(int)
    logprobs, logprob_note = logprobs_on_every_row(token_logprobs, len(answers))
    F = score_matrix(texts, p_oof, token_logprobs=logprobs)
    q = cross_fitted_scores(F, target, folds=folds, seed=seed)
    best, candidates = certify_route_and_escalate(p_oof, q, cheap_passed=cheap_passed, strong_passed=strong_passed,
                                                  cost_cheap=cost_cheap, cost_strong=cost_strong, floor=floor,
                                                  risk=risk, certificate=certificate)
    table = tuple(c.to_dict() for c in candidates)
    head = fit_answer_head(F, target, seed=seed)

    def record_of(*, on: bool, family: str, reason: str, answer_threshold: float | None = None) -> EscalationRecord:
        return EscalationRecord(on=on, reason=reason + logprob_note, family=family, answer_threshold=answer_threshold,
                                graph=ANSWER_SCORE_FILE if on else "",
                                features=SCORE_FEATURES if logprobs is None else SCORE_FEATURES_WITH_LOGPROBS,
                                feature_version=FEATURE_VERSION, candidates=table)

    if best is None:
        record = record_of(on=False, family="off", reason="neither routing nor route-then-escalate is certified at "
                           "this floor on these rows: every request goes strong")
        return EscalationStage(record, head, None, F, q)
    other = [c for c in candidates if c is not best]
    if best.family == "route":
        why = ("escalation does not pay on this log: the certified router without it costs "
               f"{best.cost_vs_strong:.3f} of always-strong"
               + (f", the certified cascade {other[0].cost_vs_strong:.3f}" if other[0].certified
                  else ", the cascade is not certified"))
        return EscalationStage(record_of(on=False, family="route", reason=why), head, best, F, q)
    why = (f"every request tries the cheap model; its answer goes to the strong model when the score is >= "
           f"{best.answer_threshold:.4f} (certified cost {best.cost_vs_strong:.3f} of always-strong on the labelled "
           f"rows, routing alone {other[0].cost_vs_strong:.3f})")
    record = record_of(on=True, family="cascade", reason=why, answer_threshold=best.answer_threshold)
    return EscalationStage(record, head, best, F, q)


def _auc(target: np.ndarray, score: np.ndarray) -> float | None:
    """Rank AUC of a score for a binary target (None: one class only)."""
    pos, neg = score[target > 0.5], score[target <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable") + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def choice_of(candidate: Candidate | None, *, goal: Goal, p: np.ndarray, q: np.ndarray, cheap_passed: np.ndarray,
              strong_passed: np.ndarray, cost_cheap: np.ndarray, cost_strong: np.ndarray) -> ThresholdChoice:
    """The served point as the pipeline's ThresholdChoice (None: neither family certified, all strong)."""
    t = ALL_STRONG if candidate is None else candidate.threshold
    u = None if candidate is None else candidate.answer_threshold
    got = served(p, q, threshold=t, answer_threshold=u, cheap_passed=cheap_passed, strong_passed=strong_passed,
                 cost_cheap=cost_cheap, cost_strong=cost_strong)
    always = float(cost_strong.mean())
    return ThresholdChoice(
        threshold=float(t), goal=goal, met=candidate is not None, strong_share=1.0 - got["cheap_share"],
        quality_vs_strong=got["quality_vs_strong"], cost_per_request=got["cost_vs_strong"] * always,
        cost_saved_fraction=1.0 - got["cost_vs_strong"], quality=got["quality_vs_strong"] * float(strong_passed.mean()),
        method=(candidate.method if candidate is not None
                else method_for(effective_certificate(goal.certificate, kind="quality_floor", n=len(p)))),
        certified=candidate is not None, bound=None if candidate is None else candidate.bound,
        n_labelled=len(p), rows="oof")


def with_escalation(stage: ThresholdStage, *, answers: Sequence[str | None], cheap_passed: np.ndarray,
                    strong_passed: np.ndarray, cost_cheap: np.ndarray, cost_strong: np.ndarray, goal: Goal,
                    test_rows: np.ndarray, p_test: np.ndarray, seed: int = 0,
                    token_logprobs: Logprobs | None = None) -> tuple[ThresholdChoice, EscalationStage | None]:
    """The pipeline's step after the threshold: (the choice to serve, the escalation stage or None: not tried).

    Not tried (the choice stands, certified at the full risk) unless the goal is a quality floor
    with a risk, the threshold was certified on cross-fitted rows and the log kept cheap answers.
    The decision to try looks at no outcome, so it costs the guarantee nothing.
    """
    if goal.kind != "quality_floor" or goal.risk is None:
        return stage.choice, None
    lab = stage.labelled_rows
    lab_answers = [answers[i] for i in lab] if lab is not None else []
    if all(a is None for a in lab_answers):  # the log kept no answers: nothing to try
        return stage.choice, None
    if stage.scores is None or lab is None:
        return stage.choice, off("escalation needs --threshold-rows all or oof (the answer score is cross-fitted)")
    rows = {"cheap_passed": cheap_passed[lab], "strong_passed": strong_passed[lab], "cost_cheap": cost_cheap[lab],
            "cost_strong": cost_strong[lab]}
    logprobs = token_logprobs if token_logprobs is not None else [None] * len(answers)
    esc = escalation_stage(answers=lab_answers, p_oof=stage.scores, **rows, folds=stage.folds, floor=goal.value,
                           risk=goal.risk, certificate=goal.certificate, seed=seed,
                           token_logprobs=[logprobs[i] for i in lab])
    if esc.scores is None or esc.head is None:  # turned off before any test (missing answers): the choice stands
        return stage.choice, esc
    choice = choice_of(esc.chosen, goal=goal, p=stage.scores, q=esc.scores, **rows)
    test_answers = [answers[i] for i in test_rows]
    test_logprobs, _ = logprobs_on_every_row([logprobs[i] for i in test_rows], len(test_rows))
    if esc.chosen is not None and all(a is not None for a in test_answers) and len(test_rows) \
            and (test_logprobs is not None or not esc.reads_logprobs):
        q_test = esc.head.predict(score_matrix([a or "" for a in test_answers], p_test,
                                               token_logprobs=test_logprobs if esc.reads_logprobs else None))
        test = {"cheap_passed": cheap_passed[test_rows], "strong_passed": strong_passed[test_rows],
                "cost_cheap": cost_cheap[test_rows], "cost_strong": cost_strong[test_rows]}
        target = ((test["cheap_passed"] < 0.5) & (test["strong_passed"] >= 0.5)).astype(float)
        evaluation = {
            "rows": int(len(test_rows)),
            "served": served(p_test, q_test, threshold=esc.chosen.threshold, answer_threshold=esc.chosen.answer_threshold,
                             **test),
            "answer_score_auc": _auc(target, q_test),
            "router_auc": _auc(target, 1.0 - p_test),
        }
        esc = replace(esc, record=replace(esc.record, evaluation=evaluation))
    return choice, esc


def on_every_row(stage: ThresholdStage, escalation: EscalationStage | None, *, X: np.ndarray, texts: list[str],
                 answers: Sequence[str | None], cheap_passed: np.ndarray, strong_passed: np.ndarray,
                 cost_cheap: np.ndarray, cost_strong: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                 test_rows: np.ndarray, goal: Goal, calibration: str = "sigmoid", seed: int = 0,
                 token_logprobs: Logprobs | None = None) -> tuple[ThresholdStage, ThresholdChoice, EscalationStage | None]:
    """After the held-out evaluation (`--threshold-rows all`): (the stage, the choice, the escalation) to ship.

    The threshold is certified again on every labelled row (`every_row_stage`) and, when escalation
    was tried, so is route against cascade, each family at half the risk as before: the gain of the
    test split's rows is the same for both (benchmarks/savings_under_guarantee.py). The answer
    score keeps the held-out figures of its train + validation version when both versions cascade.
    """
    outcomes = {"cheap_passed": cheap_passed, "strong_passed": strong_passed, "cost_cheap": cost_cheap,
                "cost_strong": cost_strong}
    final = every_row_stage(stage, X, texts, **outcomes, train_rows=train_rows, val_rows=val_rows,
                            test_rows=test_rows, goal=goal, calibration=calibration, seed=seed)
    if final is stage or escalation is None:
        return final, final.choice, escalation
    choice, shipped = with_escalation(final, answers=answers, **outcomes, goal=goal, test_rows=test_rows[:0],
                                      p_test=np.empty(0), seed=seed, token_logprobs=token_logprobs)
    if shipped is not None and shipped.record.on and escalation.record.on:
        shipped = replace(shipped, record=replace(shipped.record, evaluation=escalation.record.evaluation))
    return final, replace(choice, rows=final.rows), shipped


def describe_escalation(esc: EscalationStage) -> list[str]:
    """What router-train prints about escalation."""
    rec = esc.record
    lines = [f"escalation: {'on' if rec.on else 'off'}: {rec.reason}"]
    for c in rec.candidates:
        state = "certified" if c["certified"] else "not certified"
        lines.append(f"  {c['family']:<8} {state:<13} cost {c['cost_vs_strong']:.3f} of always-strong, quality "
                     f"{c['quality_vs_strong']:.3f}, cheap first {c['cheap_share']:.1%}, escalated "
                     f"{c['escalated_share']:.1%} (labelled rows, each family at half the risk)")
    ev = rec.evaluation
    if ev:
        s = ev["served"]
        auc = ev.get("answer_score_auc")
        lines.append(f"  held-out test ({ev['rows']} rows): cost {s['cost_vs_strong']:.3f} of always-strong, quality "
                     f"{s['quality_vs_strong']:.3f}, escalated {s['escalated_share']:.1%}"
                     + (f"; answer score AUC {auc:.3f} (router {ev['router_auc']:.3f})" if auc is not None else ""))
    return lines
