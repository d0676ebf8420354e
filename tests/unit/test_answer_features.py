"""The answer features (router_model/answer_features.py) of a few answers whose values are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router_model.answer_features import ANSWER_FEATURES, answer_feature_matrix, answer_features
from router_model.answer_score import PROMPT_FEATURE, SCORE_FEATURES, prompt_logit, score_features


def features(text: str, finish_reason: str | None = None) -> dict[str, float]:
    values = answer_features(text, finish_reason=finish_reason)
    assert values.dtype == np.float32 and values.shape == (len(ANSWER_FEATURES),)
    return dict(zip(ANSWER_FEATURES, (float(v) for v in values)))


def test_a_stated_final_choice() -> None:
    f = features("The answer is (B).")
    assert f["final_answer"] == 1.0 and f["final_choice"] == 1.0
    assert f["empty"] == 0.0 and f["cut_off"] == 0.0 and f["refusal"] == 0.0
    assert f["log_chars"] == pytest.approx(math.log1p(len("The answer is (B).")))
    assert f["log_lines"] == pytest.approx(math.log1p(1))
    assert f["choices_named"] == pytest.approx(math.log1p(1))


def test_reasoning_then_the_final_answer_in_the_tail() -> None:
    text = "First, 3 times 4 is 12, and adding 30 gives 42, which matches the second option. " * 3 + "Final answer: 42"
    f = features(text)
    assert f["final_answer"] == 1.0 and f["final_choice"] == 1.0 and f["final_in_tail"] == 1.0
    assert f["digits"] == pytest.approx(sum(c.isdigit() for c in text.strip()) / len(text.strip()))


def test_no_final_answer_and_hedging() -> None:
    f = features("It might be (A), or perhaps (C). I am not sure; actually, wait.")
    assert f["final_answer"] == 0.0 and f["final_choice"] == 0.0 and f["final_in_tail"] == 0.0
    assert f["hedges"] == pytest.approx(math.log1p(3))  # might, perhaps, not sure
    assert f["self_corrections"] == pytest.approx(math.log1p(2))  # actually, wait
    assert f["choices_named"] == pytest.approx(math.log1p(2))


def test_cut_off_by_the_finish_reason_or_mid_sentence() -> None:
    assert features("The answer is 42.", "length")["cut_off"] == 1.0
    assert features("The answer is 42.", "max_tokens")["cut_off"] == 1.0
    assert features("The answer is 42.", "stop")["cut_off"] == 0.0
    assert features("The answer is 42.")["cut_off"] == 0.0
    assert features("So the next step would be to")["cut_off"] == 1.0


def test_a_refusal() -> None:
    assert features("I'm sorry, but I can't help with that.")["refusal"] == 1.0
    assert features("As an AI, I cannot browse.")["refusal"] == 1.0
    assert features("Sorting is easy: use sorted().")["refusal"] == 0.0


def test_an_unbalanced_code_fence() -> None:
    f = features("Here you go:\n```python\nprint(1)")
    assert f["unbalanced_fence"] == 1.0 and f["code_fences"] == pytest.approx(math.log1p(1))
    g = features("Here you go:\n```python\nprint(1)\n```")
    assert g["unbalanced_fence"] == 0.0 and g["code_fences"] == pytest.approx(math.log1p(2))


def test_repeated_lines() -> None:
    f = features("a.\na.\nb.\na.")
    assert f["repeated_lines"] == pytest.approx(0.5)  # two of four lines repeat an earlier one
    assert f["log_lines"] == pytest.approx(math.log1p(4))
    assert features("one.\ntwo.")["repeated_lines"] == 0.0


def test_an_empty_answer() -> None:
    f = features("   \n ")
    assert f["empty"] == 1.0
    assert all(v == 0.0 for k, v in f.items() if k != "empty")


def test_the_matrix_and_the_score_row() -> None:
    texts = ["The answer is (B).", ""]
    m = answer_feature_matrix(texts, finish_reasons=["stop", "length"])
    assert m.shape == (2, len(ANSWER_FEATURES))
    assert np.array_equal(m[0], answer_features(texts[0], finish_reason="stop"))
    assert answer_feature_matrix([]).shape == (0, len(ANSWER_FEATURES))
    with pytest.raises(ValueError):
        answer_feature_matrix(texts, finish_reasons=[None])
    row = score_features("The answer is (B).", p_cheap_ok=0.8)
    assert row.shape == (len(SCORE_FEATURES),) and SCORE_FEATURES[-1] == PROMPT_FEATURE
    assert row[-1] == pytest.approx(math.log(0.8 / 0.2), rel=1e-6)
    assert prompt_logit(1.0) == pytest.approx(-prompt_logit(0.0))  # clipped, finite
