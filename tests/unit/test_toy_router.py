"""The router's public behaviour on toy artifacts (tests/toy_artifact.py): no trained model needed.

The toy graphs route by keywords: "prove", "theorem", ... push to the strong model, "translate",
"summarise", ... to the cheap one, and the exact p_cheap_ok of a prompt is `pair_p_cheap_ok`.
Everything goes through `Router.load` and public attributes, so these tests hold whichever class
serves an N-model directory.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from toy_artifact import (
    DEFAULT_MULTI_MODELS,
    multi_p_pass,
    pair_p_cheap_ok,
    write_toy_multi,
    write_toy_pair,
)

from router_model.artifact import (
    GRAPH_FILES,
    INT8,
    METADATA_FILE,
    TOKENIZER_FILE,
    ArtifactMetadata,
    read_metadata,
    sha256_file,
    write_metadata,
)
from router_model.decision import RoutingRules
from router_model.errors import ArtifactError, InvalidRequestError
from router_model.observe.drift import REFERENCE_FILE
from router_model.router import Router

CHEAP_PROMPT = "Translate this sentence into French."
STRONG_PROMPT = "Prove the theorem."
NEUTRAL_PROMPT = "What is this about?"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
PROMPTS = [
    CHEAP_PROMPT,
    STRONG_PROMPT,
    NEUTRAL_PROMPT,
    "Summarise the following email.",
    "Derive the integral and prove the lemma by induction.",
    "Classify the sentiment of this review: " + "the food was fine and " * 30 + "we left.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Extract the dates from this email."}],
]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(path: Path, **kw) -> ArtifactError:
    with pytest.raises(ArtifactError) as exc:
        Router.load(path, **kw)
    return exc.value


# --- the directory: complete, verified, refused when damaged --------------------------------------
def test_toy_pair_is_a_complete_verified_format_1_directory(toy_model_dir: Path, toy_router: Router) -> None:
    meta = read_metadata(toy_model_dir)
    assert meta.format_version == 1 and meta.multi is None and meta.policy is None
    assert set(meta.files) == {*GRAPH_FILES.values(), TOKENIZER_FILE, REFERENCE_FILE}
    for name, sha in meta.files.items():
        assert sha256_file(toy_model_dir / name) == sha
    assert toy_router.version == meta.artifact_version
    assert (toy_router.cheap_model, toy_router.strong_model, toy_router.threshold) == ("gpt-4o-mini", "gpt-4o", 0.5)


@pytest.mark.parametrize("name", [GRAPH_FILES[INT8], TOKENIZER_FILE, REFERENCE_FILE])
def test_load_refuses_a_tampered_file_naming_it(toy_model_dir: Path, tmp_path: Path, name: str) -> None:
    d = _copy(toy_model_dir, tmp_path / "m")
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / name).write_bytes(bytes(data))
    e = _refused(d)  # the default (fp32) graph: every listed file is verified, not only the served one
    assert e.file == name and "sha256 mismatch" in str(e)


def test_load_refuses_a_missing_graph(toy_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(toy_model_dir, tmp_path / "m")
    (d / GRAPH_FILES["fp32"]).unlink()
    e = _refused(d, graph=INT8)
    assert e.file == GRAPH_FILES["fp32"] and "missing" in str(e)


def _rewrite(d: Path, **changes) -> None:
    raw = json.loads((d / METADATA_FILE).read_text())
    raw.update(changes)
    write_metadata(d, ArtifactMetadata.from_dict(raw))  # rehashed: the load gets past verification to the graph


def test_load_checks_the_graph_against_the_metadata(toy_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(toy_model_dir, tmp_path / "no-features")
    _rewrite(d, features=[])
    e = _refused(d)
    assert e.file == GRAPH_FILES["fp32"] and "inputs" in str(e) and "features" in str(e)
    d = _copy(toy_model_dir, tmp_path / "three-classes")
    _rewrite(d, classes=["both", "cheap_only", "strong_only"], cheap_ok_classes=["both", "cheap_only"])
    e = _refused(d)
    assert e.file == GRAPH_FILES["fp32"] and "shape" in str(e)


def test_seed_and_version_give_distinct_valid_artifacts(toy_router: Router, toy_second_model_dir: Path,
                                                        tmp_path: Path) -> None:
    second = Router.load(toy_second_model_dir)
    assert second.version != toy_router.version
    assert read_metadata(toy_second_model_dir).files[GRAPH_FILES["fp32"]] != toy_router.meta.files[GRAPH_FILES["fp32"]]
    # Only the noise columns differ: both route every prompt alike.
    assert [d.model for d in second.predict_batch(PROMPTS)] == [d.model for d in toy_router.predict_batch(PROMPTS)]
    assert Router.load(write_toy_pair(tmp_path / "v", version="release-7")).version == "release-7"
    # The same arguments write the same artifact_version (a test can predict it).
    assert Router.load(write_toy_pair(tmp_path / "again")).version == toy_router.version


def test_rewriting_a_directory_in_place_publishes_a_new_version(tmp_path: Path) -> None:
    d = write_toy_pair(tmp_path / "live")
    first = Router.load(d)
    assert write_toy_pair(d, seed=2) == d
    second = Router.load(d)
    assert second.version != first.version and second.predict(STRONG_PROMPT).model == "gpt-4o"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # no staging directory left behind
    (tmp_path / "user-data").mkdir()
    (tmp_path / "user-data" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_toy_pair(tmp_path / "user-data")
    assert (tmp_path / "user-data" / "notes.txt").read_text() == "keep me"


# --- the classifier ------------------------------------------------------------------------------
def test_cheap_words_route_cheap_and_strong_words_route_strong(toy_router: Router) -> None:
    cheap, strong = toy_router.predict(CHEAP_PROMPT), toy_router.predict(STRONG_PROMPT)
    assert (cheap.model, cheap.reason) == ("gpt-4o-mini", "classifier")
    assert (strong.model, strong.reason) == ("gpt-4o", "classifier")
    assert cheap.margin is not None and cheap.margin > 0.2
    assert strong.margin is not None and strong.margin < -0.2
    assert cheap.artifact_version == strong.artifact_version == toy_router.version


@pytest.mark.parametrize("text", [CHEAP_PROMPT, STRONG_PROMPT, NEUTRAL_PROMPT, "prove", "Translate translate translate."])
def test_p_cheap_ok_is_the_toy_formula(toy_router: Router, text: str) -> None:
    d = toy_router.predict(text)
    assert d.p_cheap_ok == pytest.approx(pair_p_cheap_ok(text), abs=1e-6)
    assert d.margin == pytest.approx(d.p_cheap_ok - 0.5)
    assert float(toy_router.p_cheap_ok([text])[0]) == pytest.approx(d.p_cheap_ok, abs=1e-9)


def test_confidence_of_each_side(toy_router: Router) -> None:
    cheap, strong = toy_router.predict(CHEAP_PROMPT), toy_router.predict(STRONG_PROMPT)
    assert cheap.confidence == pytest.approx(cheap.p_cheap_ok)
    # strong: 1 - P(only the cheap model passes); the toy head gives that class 0.1 * p_cheap_ok
    assert strong.confidence == pytest.approx(1.0 - 0.1 * strong.p_cheap_ok, abs=1e-6)
    assert strong.p_pass is None and strong.expected_cost_usd is None  # pair decisions carry no N-model fields


def test_prompt_tokens_count_words_without_special_tokens(toy_router: Router) -> None:
    assert toy_router.predict(CHEAP_PROMPT).prompt_tokens == 6  # five words and the full stop
    assert toy_router.predict("zebra quokka axolotl").prompt_tokens == 3  # unknown words still count


def test_predict_batch_equals_predict_one_by_one(toy_router: Router) -> None:
    batch = PROMPTS * 6  # 42 requests: two graph batches, several lengths
    tags = [["high-accuracy"] if i % 7 == 3 else None for i in range(len(batch))]
    together = toy_router.predict_batch(batch, tags=tags)
    alone = [toy_router.predict(r, tags=t) for r, t in zip(batch, tags)]
    assert len(together) == len(batch)
    for a, b in zip(together, alone):
        assert (a.model, a.reason, a.prompt_tokens) == (b.model, b.reason, b.prompt_tokens)
        if b.p_cheap_ok is None:
            assert a.p_cheap_ok is None
        else:
            assert a.p_cheap_ok == pytest.approx(b.p_cheap_ok, abs=1e-6)
    assert {d.reason for d in together} == {"classifier", "tag:high-accuracy"}


def test_head_tail_truncation_keeps_a_keyword_at_the_end(toy_model_dir: Path, toy_router: Router, tmp_path: Path) -> None:
    text = "the " * 400 + "prove"  # over the toy's 128-token window
    assert toy_router.meta.encoder.max_length == 128
    head_tail = toy_router.predict(text).p_cheap_ok
    head_only = Router.load(write_toy_pair(tmp_path / "head", truncation="head")).predict(text).p_cheap_ok
    assert head_only == pytest.approx(0.6, abs=1e-6)  # the keyword was cut: a neutral text
    assert head_tail == pytest.approx(1 / (1 + math.exp(-(math.log(1.5) - 8.0 / 128))), abs=1e-6)


def test_int8_graph_serves_the_same_decisions(toy_model_dir: Path, toy_router: Router) -> None:
    int8 = Router.load(toy_model_dir, graph=INT8)
    assert int8.graph == INT8 and toy_router.graph == "fp32"
    for a, b in zip(int8.predict_batch(PROMPTS), toy_router.predict_batch(PROMPTS)):
        assert a.model == b.model and a.p_cheap_ok == pytest.approx(b.p_cheap_ok, abs=1e-6)


def test_drift_reference_and_centroid_distance(toy_router: Router) -> None:
    assert toy_router.drift_reference is not None and toy_router.drift_reference.embedding is not None
    d = toy_router.predict(CHEAP_PROMPT)
    assert d.centroid_distance is not None and 0.0 <= d.centroid_distance < 2.5
    assert toy_router.predict(CHEAP_PROMPT, tags=["high-accuracy"]).centroid_distance is None  # a rule decided


# --- rules ---------------------------------------------------------------------------------------
def test_image_goes_to_the_strong_model_with_reason_vision(toy_router: Router) -> None:
    d = toy_router.predict([{"role": "user", "content": [{"type": "text", "text": CHEAP_PROMPT}, IMAGE]}])
    assert (d.model, d.reason, d.p_cheap_ok, d.confidence, d.margin) == ("gpt-4o", "vision", None, 1.0, None)


@pytest.mark.parametrize("tags, reason", [(["High-Accuracy "], "tag:high-accuracy"), (["x", "vision"], "tag:vision")])
def test_strong_tags_go_to_the_strong_model(toy_router: Router, tags: list[str], reason: str) -> None:
    d = toy_router.predict(CHEAP_PROMPT, tags=tags)
    assert (d.model, d.reason) == ("gpt-4o", reason)
    assert toy_router.predict(CHEAP_PROMPT, tags=["casual"]).model == "gpt-4o-mini"


def test_long_context_over_max_tokens(toy_router: Router) -> None:
    assert toy_router.rules.max_tokens == 16_000
    at_limit = toy_router.predict("translate " * 16_000)
    over = toy_router.predict("translate " * 16_001)
    assert (at_limit.model, at_limit.reason, at_limit.prompt_tokens) == ("gpt-4o-mini", "classifier", 16_000)
    assert (over.model, over.reason, over.prompt_tokens) == ("gpt-4o", "long-context", 16_001)
    # Every message counts toward the length, not only the classifier's last user turn.
    chat = [{"role": "system", "content": "the " * 15_999}, {"role": "user", "content": "Translate it."}]
    assert toy_router.predict(chat).reason == "long-context"


def test_rules_switched_off_leave_the_decision_to_the_classifier(toy_model_dir: Path) -> None:
    bare = Router.load(toy_model_dir, rules=RoutingRules(image_to_strong=False, strong_tags=frozenset(), max_tokens=None))
    d = bare.predict([{"role": "user", "content": [{"type": "text", "text": CHEAP_PROMPT}, IMAGE]}], tags=["high-accuracy"])
    assert (d.model, d.reason) == ("gpt-4o-mini", "classifier")
    assert bare.predict("translate " * 16_001).reason == "classifier"
    with pytest.raises(InvalidRequestError) as exc:  # an image alone leaves nothing to classify
        bare.predict([{"role": "user", "content": [IMAGE]}])
    assert exc.value.field == "messages"


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_, kwargs, field",
    [
        ("", {}, "prompt"),
        ("\u200b\n ", {}, "prompt"),
        ("bad \ud800 surrogate", {}, "prompt"),
        (b"bytes", {}, "request"),
        (17, {}, "request"),
        ([], {}, "messages"),
        ([{"role": "bot", "content": "x"}], {}, "messages[0].role"),
        ([{"role": "user", "content": 5}], {}, "messages[0].content"),
        ([{"role": "user", "content": [{"type": "video"}]}], {}, "messages[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], {}, "messages[0].content[0].text"),
        ("fine", {"tags": "high-accuracy"}, "tags"),
        ("fine", {"tags": ["ok", 3]}, "tags[1]"),
    ],
)
def test_bad_input_names_the_field(toy_router: Router, request_, kwargs, field: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        toy_router.predict(request_, **kwargs)
    assert exc.value.field == field and exc.value.index is None
    assert str(exc.value).startswith(f"{field}: ")


def test_bad_batch_input_names_the_item(toy_router: Router) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        toy_router.predict_batch([CHEAP_PROMPT, [{"role": "user"}], ""])
    assert (exc.value.index, exc.value.field) == (1, "messages")
    assert str(exc.value).startswith("requests[1].messages: ")
    with pytest.raises(InvalidRequestError) as exc:
        toy_router.predict_batch("not a list")
    assert exc.value.field == "requests" and exc.value.index is None
    with pytest.raises(InvalidRequestError) as exc:
        toy_router.predict_batch([CHEAP_PROMPT, STRONG_PROMPT], tags=[["x"]])
    assert exc.value.field == "tags"
    assert toy_router.predict_batch([]) == []


# --- N models ------------------------------------------------------------------------------------
def test_n_model_directory_loads_with_its_models(toy_multi_dir: Path, toy_multi_router: Router) -> None:
    meta = read_metadata(toy_multi_dir)
    assert meta.format_version == 2 and meta.multi is not None and meta.multi.rule == "cheapest_ok"
    assert tuple(toy_multi_router.models) == DEFAULT_MULTI_MODELS
    assert toy_multi_router.version == meta.artifact_version


@pytest.mark.parametrize("text, chosen", [(CHEAP_PROMPT, 0), (NEUTRAL_PROMPT, 1), (STRONG_PROMPT, 2)])
def test_n_model_router_picks_the_cheapest_model_that_is_ok(toy_multi_router: Router, text: str, chosen: int) -> None:
    d = toy_multi_router.predict(text)
    assert (d.model, d.reason) == (DEFAULT_MULTI_MODELS[chosen], "classifier")
    assert d.p_pass is not None and list(d.p_pass) == list(DEFAULT_MULTI_MODELS)
    assert list(d.p_pass.values()) == pytest.approx(multi_p_pass(text), abs=1e-6)
    assert d.expected_cost_usd is not None and d.expected_cost_usd > 0


def test_more_expensive_models_cost_more_for_the_same_request(toy_multi_router: Router) -> None:
    costs = [toy_multi_router.predict(CHEAP_PROMPT, candidates=[m]).expected_cost_usd for m in DEFAULT_MULTI_MODELS]
    assert costs == sorted(costs) and len(set(costs)) == 3


def test_candidates_restrict_the_choice(toy_multi_router: Router) -> None:
    mini, mid, top = DEFAULT_MULTI_MODELS
    assert toy_multi_router.predict(CHEAP_PROMPT, candidates=[mid, top]).model == mid  # cheapest ok among them
    assert toy_multi_router.predict(STRONG_PROMPT, candidates=[mini, mid]).model == mid  # none ok: highest P(pass)
    assert toy_multi_router.predict(STRONG_PROMPT, candidates=[mini]).model == mini  # one candidate: that one
    # A rule sends the request to the best single model, or to the best allowed candidate.
    assert toy_multi_router.predict(CHEAP_PROMPT, tags=["high-accuracy"]).model == top
    d = toy_multi_router.predict(CHEAP_PROMPT, tags=["high-accuracy"], candidates=[mini, mid])
    assert (d.model, d.reason) == (mid, "tag:high-accuracy")


def test_unknown_candidate_is_refused_naming_it(toy_multi_router: Router) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        toy_multi_router.predict(CHEAP_PROMPT, candidates=["gpt-4o", "claude-3-haiku"])
    assert exc.value.field == "candidates"
    assert "claude-3-haiku" in str(exc.value)


def test_n_model_predict_batch_equals_predict(toy_multi_router: Router) -> None:
    batch = PROMPTS * 5
    together = toy_multi_router.predict_batch(batch)
    alone = [toy_multi_router.predict(r) for r in batch]
    assert [d.model for d in together] == [d.model for d in alone]
    assert [d.p_cheap_ok for d in together] == pytest.approx([d.p_cheap_ok for d in alone], abs=1e-6)
    assert {d.model for d in together} == set(DEFAULT_MULTI_MODELS)


def test_four_models_and_a_middle_prompt(tmp_path: Path) -> None:
    models = ("nano", "mini", "large", "xl")
    r = Router.load(write_toy_multi(tmp_path / "four", models=models))
    # "Prove it." has strength 8 / 5 = 1.6: beyond mini (1.0), within large (2.0)
    assert [r.predict(t).model for t in (CHEAP_PROMPT, NEUTRAL_PROMPT, "Prove it.", STRONG_PROMPT)] == list(models)


@pytest.mark.parametrize("which", ["pair", "multi", "policy"])
def test_p_cheap_ok_is_a_probability(which: str, toy_router: Router, toy_multi_router: Router,
                                     toy_policy_router: Router) -> None:
    router = {"pair": toy_router, "multi": toy_multi_router, "policy": toy_policy_router}[which]
    texts = [*PROMPTS, "prove " * 50, "translate " * 50, "zebra"]
    ps = [d.p_cheap_ok for d in router.predict_batch(texts)]
    assert all(p is not None and 0.0 <= p <= 1.0 for p in ps)
    if which != "multi":  # (an N-model decision's p_cheap_ok is the chosen model's P(ok))
        assert max(ps) - min(ps) > 0.5  # the keywords move it across most of the range


# --- day-0 policy ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, model, reason",
    [
        ("Translate this into French.", "gpt-4o-mini", "policy:translation"),
        ("Extract the dates from this email.", "gpt-4o-mini", "policy:extraction"),
        (STRONG_PROMPT, "gpt-4o", "policy:maths"),
        ("Debug this python code.", "gpt-4o", "policy:code"),
    ],
)
def test_policy_reason_names_the_route(toy_policy_router: Router, text: str, model: str, reason: str) -> None:
    d = toy_policy_router.predict(text)
    assert (d.model, d.reason) == (model, reason)


def test_policy_rules_replace_the_default_rules(toy_policy_dir: Path, toy_policy_router: Router, toy_router: Router) -> None:
    meta = read_metadata(toy_policy_dir)
    assert meta.policy is not None and meta.features == () and "policy.yaml" in meta.files
    assert toy_policy_router.predict(CHEAP_PROMPT, tags=["legal"]).reason == "tag:legal"
    assert toy_router.predict(CHEAP_PROMPT, tags=["legal"]).reason == "classifier"
    assert toy_policy_router.predict(CHEAP_PROMPT, tags=["vision"]).reason.startswith("policy:")
    assert toy_policy_router.predict("translate " * 1001).reason == "long-context"  # the policy's max_tokens 1000
