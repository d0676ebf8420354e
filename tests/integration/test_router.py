"""The inference package on a real trained artifact: decisions, rules, bad input, loading, refusal."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import router_model
from router_model import api
from router_model.artifact import METADATA_FILE, ArtifactMetadata, write_metadata
from router_model.decision import RoutingRules
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError
from router_model.router import Router

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sentence_transformers", "sklearn", "transformers", "onnx", "skl2onnx", "mlflow", "joblib")
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
NO_RULES = RoutingRules(image_to_strong=False, strong_tags=frozenset(), max_tokens=None)
PROMPTS = [
    "What is 2 + 2?",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Translate 'good morning' into French.",
    "Write a Python function that merges overlapping intervals and analyse its complexity:\n```python\ndef merge(xs):\n```",
    "Summarise: " + "The committee met on Tuesday and discussed the budget for next year in great detail. " * 40,
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three prime numbers."}],
    [{"role": "user", "content": [{"type": "text", "text": "Explain the Monty Hall problem."}]}],
    "hi",
]


@pytest.fixture(scope="module")
def router(model_dir: Path) -> Router:
    return Router.load(model_dir, graph="fp32")


@pytest.fixture(scope="module")
def bare_router(model_dir: Path) -> Router:
    """Every rule switched off: only the classifier decides."""
    return Router.load(model_dir, graph="int8", rules=NO_RULES)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_py(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**_env(), **env})


# --- the serving path stays light ----------------------------------------------------------
def test_predict_does_not_import_training_stack(model_dir: Path) -> None:
    code = f"""
import json, sys
import router_model
from router_model import Router, RoutingRules
r = Router.load({str(model_dir)!r})
r.predict("What is the capital of France?")
r.predict_batch(["a b c", [{{"role": "user", "content": "hi"}}]], tags=[None, ["x"]])
heavy = {HEAVY!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""
    res = run_py(code)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_no_pickle_on_the_serving_path(model_dir: Path) -> None:
    pattern = re.compile(r"\bimport (pickle|joblib|dill|cloudpickle)\b|\bfrom (pickle|joblib|dill|cloudpickle)\b|"
                         r"\b(pickle|joblib|dill|cloudpickle)\.load|allow_pickle\s*=\s*True")
    offenders = []
    for path in (REPO / "router_model").rglob("*.py"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert offenders == []
    suffixes = {p.suffix for p in model_dir.iterdir()}
    assert not suffixes & {".pkl", ".pickle", ".joblib", ".npy", ".npz"}
    assert sorted(p.name for p in model_dir.iterdir()) == ["drift_reference.json", "metadata.json", "model.int8.onnx", "model.onnx", "tokenizer.json"]


# --- decisions -----------------------------------------------------------------------------
def _check_classifier_decision(d, r: Router) -> None:
    assert d.reason == "classifier"
    assert d.model in (r.cheap_model, r.strong_model)
    assert 0.0 <= d.p_cheap_ok <= 1.0
    assert d.threshold == pytest.approx(r.threshold)
    assert d.artifact_version == r.version
    assert d.prompt_tokens > 0
    assert d.margin == pytest.approx(d.p_cheap_ok - d.threshold)
    if d.p_cheap_ok >= d.threshold:
        assert d.model == r.cheap_model and d.confidence == pytest.approx(d.p_cheap_ok)
    else:
        # P(strong >= cheap) = 1 - P(only cheap passes) >= P(only strong passes) = 1 - p_cheap_ok
        assert d.model == r.strong_model and d.confidence >= 1.0 - d.p_cheap_ok - 1e-9
    assert 0.0 <= d.confidence <= 1.0


def test_load_and_predict(router: Router, trained) -> None:
    meta = trained.metadata
    assert router.cheap_model == meta.cheap_model == "gpt-4o-mini"
    assert router.strong_model == meta.strong_model == "gpt-4o"
    assert router.version == meta.artifact_version
    assert router.threshold == pytest.approx(meta.threshold)
    assert router.graph == "fp32"
    for p in PROMPTS:
        d = router.predict(p)
        _check_classifier_decision(d, router)
        assert set(d.to_dict()) == {"model", "p_cheap_ok", "confidence", "threshold", "reason", "artifact_version",
                                    "prompt_tokens", "margin", "centroid_distance", "p_pass", "expected_cost_usd"}


def test_both_sides_of_the_threshold_route_to_their_model(router: Router) -> None:
    """Confidence semantics on a cheap and on a strong decision, whatever this small model predicts."""
    import numpy as np

    t, head, classes = router.threshold, router.head, router.meta.classes
    cheap_cols = list(router.meta.cheap_ok_index)
    other = [i for i in range(len(classes)) if i not in cheap_cols]

    def row(p_ok: float) -> np.ndarray:  # class probabilities with p_cheap_ok = p_ok, spread evenly
        r = np.zeros(len(classes))
        r[cheap_cols] = p_ok / len(cheap_cols)
        r[other] = (1 - p_ok) / len(other)
        return r

    d_cheap, d_strong = head.decide(np.stack([row(min(1.0, t + 0.05)), row(max(0.0, t - 0.05))]), [10, 10], None)
    assert d_cheap.model == router.cheap_model and d_cheap.confidence == pytest.approx(d_cheap.p_cheap_ok)
    assert d_cheap.margin == pytest.approx(0.05) and d_strong.margin == pytest.approx(-0.05)
    assert d_strong.model == router.strong_model and 0.0 <= d_strong.confidence <= 1.0
    rule = head.rule_decision("vision", 10, None)
    assert rule.model == router.strong_model and rule.p_cheap_ok is None and rule.confidence == 1.0
    assert rule.margin is None


def test_strong_confidence_is_one_minus_p_only_cheap_passes(router: Router) -> None:
    """The joint head's classes give P(strong does at least as well) directly; check it on the graph."""
    assert router.meta.target == "joint"
    classes = router.meta.classes  # a class never seen in training has probability 0 (tiny logs)
    for p in PROMPTS:
        d = router.predict(p)
        probs = router._probabilities([router._prepare(p, None).parsed.classifier_text], [d.prompt_tokens])[0]
        p_only_cheap = probs[classes.index("cheap_only")] if "cheap_only" in classes else 0.0
        expected = d.p_cheap_ok if d.model == router.cheap_model else 1.0 - p_only_cheap
        assert d.confidence == pytest.approx(expected, abs=1e-6)


def test_batch_preserves_order_and_equals_single(router: Router) -> None:
    batch = router.predict_batch(PROMPTS)
    singles = [router.predict(p) for p in PROMPTS]
    assert len(batch) == len(PROMPTS)
    for b, s in zip(batch, singles):
        assert b.model == s.model and b.reason == s.reason and b.prompt_tokens == s.prompt_tokens
        assert b.p_cheap_ok == pytest.approx(s.p_cheap_ok, abs=1e-5)
    # Length-sorted batching must not shuffle: reversing the input reverses the output.
    rev = router.predict_batch(PROMPTS[::-1])
    assert [d.p_cheap_ok for d in rev[::-1]] == pytest.approx([d.p_cheap_ok for d in batch], abs=1e-5)
    assert len({round(d.p_cheap_ok, 6) for d in batch}) > 1  # distinct prompts, distinct scores


def test_p_cheap_ok_matches_decisions(router: Router) -> None:
    texts = [p for p in PROMPTS if isinstance(p, str)]
    probs = router.p_cheap_ok(texts)
    assert probs == pytest.approx([router.predict(t).p_cheap_ok for t in texts], abs=1e-5)


# --- rules -----------------------------------------------------------------------------------
def test_image_goes_to_strong(router: Router) -> None:
    d = router.predict([{"role": "user", "content": [{"type": "text", "text": "What is in this photo?"}, IMAGE]}])
    assert (d.model, d.reason, d.p_cheap_ok, d.confidence) == (router.strong_model, "vision", None, 1.0)
    only_image = router.predict([{"role": "user", "content": [IMAGE]}])
    assert only_image.reason == "vision"


@pytest.mark.parametrize("tags, reason", [(["high-accuracy"], "tag:high-accuracy"), (["misc", " Vision "], "tag:vision")])
def test_strong_tags(router: Router, tags, reason: str) -> None:
    d = router.predict("What is 2 + 2?", tags=tags)
    assert (d.model, d.reason, d.p_cheap_ok, d.confidence) == (router.strong_model, reason, None, 1.0)
    assert router.predict("What is 2 + 2?", tags=["other"]).reason == "classifier"


def test_long_context_rule(model_dir: Path) -> None:
    r = Router.load(model_dir, graph="int8", rules=RoutingRules(max_tokens=50))
    long = "Please read the following notes carefully. " * 20
    d = r.predict(long)
    assert d.reason == "long-context" and d.model == r.strong_model and d.prompt_tokens > 50
    assert r.predict("Short question?").reason == "classifier"
    # Every message counts toward the length, not only the classifier's text.
    msgs = [{"role": "system", "content": long}, {"role": "user", "content": "ok?"}]
    assert r.predict(msgs).reason == "long-context"
    with pytest.raises(ValueError):
        RoutingRules(max_tokens=0)


def test_rules_disabled_the_classifier_decides(bare_router: Router) -> None:
    r = bare_router
    d = r.predict([{"role": "user", "content": [{"type": "text", "text": "Describe this chart."}, IMAGE]}], tags=["high-accuracy", "vision"])
    _check_classifier_decision(d, r)
    big = r.predict("word " * 30_000)
    _check_classifier_decision(big, r)
    with pytest.raises(InvalidRequestError) as exc:
        r.predict([{"role": "user", "content": [IMAGE]}])
    assert exc.value.field == "messages"


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "request_, kwargs, field",
    [
        ("", {}, "prompt"),
        ("  ", {}, "prompt"),
        (b"bytes", {}, "request"),
        (17, {}, "request"),
        ({"prompt": "x"}, {}, "request"),
        ([], {}, "messages"),
        ([{"role": "bot", "content": "x"}], {}, "messages[0].role"),
        ([{"role": "user", "content": [{"type": "video"}]}], {}, "messages[0].content[0].type"),
        ("fine", {"tags": "high-accuracy"}, "tags"),
        ("fine", {"tags": ["ok", 3]}, "tags[1]"),
    ],
)
def test_bad_input_names_the_field(router: Router, request_, kwargs, field: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        router.predict(request_, **kwargs)
    assert exc.value.field == field and exc.value.index is None
    assert isinstance(exc.value, ValueError)


def test_bad_batch_input_names_the_item(router: Router) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        router.predict_batch(["good", "", "also good"])
    assert (exc.value.index, exc.value.field) == (1, "prompt")
    assert str(exc.value).startswith("requests[1].prompt: ")
    with pytest.raises(InvalidRequestError) as exc:
        router.predict_batch([""])
    assert (exc.value.index, exc.value.field) == (0, "prompt")
    with pytest.raises(InvalidRequestError) as exc:
        router.predict_batch("not a list")
    assert exc.value.field == "requests"
    with pytest.raises(InvalidRequestError) as exc:
        router.predict_batch(["a", "b"], tags=[["x"]])
    assert exc.value.field == "tags"
    assert router.predict_batch([]) == []


def test_multi_megabyte_prompt_is_fast_and_defined(router: Router) -> None:
    text = "Background: " + ("the quick brown fox jumps over the lazy dog. " * 70_000) + "Question: what did the fox do?"
    assert len(text) > 3_000_000
    t0 = time.perf_counter()
    d = router.predict(text)
    m = router.predict([{"role": "user", "content": text}])
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"two multi-MB requests took {elapsed:.1f}s"
    assert d.reason == m.reason == "long-context" and d.model == router.strong_model
    assert d.prompt_tokens == math.ceil(len(text) / 4)


# --- process-wide router ------------------------------------------------------------------
def test_predict_model_from_env_in_a_subprocess(model_dir: Path) -> None:
    code = """
import json
from router_model import predict_model
from router_model.api import get_router
d = predict_model("What is the capital of France?", tags=["x"])
print(json.dumps({"decision": d.to_dict(), "graph": get_router().graph}))
"""
    res = run_py(code, ROUTER_MODEL_DIR=str(model_dir), ROUTER_MODEL_GRAPH="int8", ROUTER_MODEL_THREADS="1")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["graph"] == "int8"
    assert out["decision"]["reason"] == "classifier"
    assert out["decision"]["model"] in ("gpt-4o-mini", "gpt-4o")
    env = {k: v for k, v in _env().items() if k != "ROUTER_MODEL_DIR"}
    res = subprocess.run([sys.executable, "-c", "import router_model; router_model.predict_model('hi')"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode != 0 and "ConfigError" in res.stderr and "ROUTER_MODEL_DIR" in res.stderr


def test_configure(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "_router", None)
    monkeypatch.delenv("ROUTER_MODEL_DIR", raising=False)
    monkeypatch.delenv("ROUTER_MODEL_GRAPH", raising=False)
    with pytest.raises(ConfigError):
        router_model.configure()
    r = router_model.configure(model_dir=model_dir, graph="int8", rules=RoutingRules(strong_tags=frozenset({"legal"})))
    assert api.get_router() is r and r.graph == "int8"
    assert router_model.predict_model("Is this contract valid?", tags=["legal"]).reason == "tag:legal"
    assert router_model.predict_model("What is 2 + 2?", tags=["high-accuracy"]).reason == "classifier"
    monkeypatch.setenv("ROUTER_MODEL_THREADS", "many")
    with pytest.raises(ConfigError):
        router_model.configure(model_dir=model_dir)


# --- artifact refusal --------------------------------------------------------------------------
def clone(src: Path, dst: Path, *, copy: tuple[str, ...] = ()) -> Path:
    """A model dir whose big files link to src's; metadata, tokenizer and `copy` are real copies."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in (METADATA_FILE, "tokenizer.json", *copy):
            shutil.copyfile(f, dst / f.name)
        else:
            os.symlink(f.resolve(), dst / f.name)
    return dst


def _refused(path: Path, **kw) -> ArtifactError:
    with pytest.raises(ArtifactError) as exc:
        Router.load(path, **kw)
    return exc.value


def test_clone_loads(model_dir: Path, tmp_path: Path) -> None:
    assert Router.load(clone(model_dir, tmp_path / "m"), graph="int8").predict("hi").reason == "classifier"


def test_refuses_missing_metadata(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    (d / METADATA_FILE).unlink()
    e = _refused(d)
    assert e.file == METADATA_FILE and "not found" in str(e)


def test_refuses_truncated_metadata(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    text = (d / METADATA_FILE).read_text()
    (d / METADATA_FILE).write_text(text[: len(text) // 2])
    e = _refused(d)
    assert e.file == METADATA_FILE and "not valid JSON" in str(e)


def test_refuses_missing_model_file(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    (d / "model.onnx").unlink()
    e = _refused(d, graph="fp32")
    assert e.file == "model.onnx" and "missing" in str(e)
    # Every file metadata.json lists is verified (issue 11): a directory is whole or refused.
    assert _refused(d, graph="int8").file == "model.onnx"


def test_refuses_tampered_model(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m", copy=("model.int8.onnx",))
    data = bytearray((d / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.int8.onnx").write_bytes(bytes(data))
    e = _refused(d, graph="int8")
    assert e.file == "model.int8.onnx" and "sha256 mismatch" in str(e)


def test_refuses_truncated_tokenizer(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    tok = (d / "tokenizer.json").read_bytes()
    (d / "tokenizer.json").write_bytes(tok[: len(tok) // 3])
    e = _refused(d)
    assert e.file == "tokenizer.json" and "sha256 mismatch" in str(e)


def test_refuses_newer_format(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    meta = json.loads((d / METADATA_FILE).read_text())
    meta["format_version"] = 99
    (d / METADATA_FILE).write_text(json.dumps(meta))
    e = _refused(d)
    assert e.file == METADATA_FILE and "newer" in str(e) and "99" in str(e)


def test_refuses_unknown_graph(model_dir: Path) -> None:
    e = _refused(model_dir, graph="fp16")
    assert e.file == METADATA_FILE and "fp16" in str(e)


def _rewrite(d: Path, **changes) -> None:
    meta = json.loads((d / METADATA_FILE).read_text())
    meta.update(changes)
    write_metadata(d, ArtifactMetadata.from_dict(meta))  # rehashes the files: the load gets past verification to the graph check


def test_refuses_features_that_do_not_match_the_graph(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    meta = json.loads((d / METADATA_FILE).read_text())
    assert len(meta["features"]) >= 2
    _rewrite(d, features=meta["features"][:-1])
    e = _refused(d, graph="int8")
    assert e.file == "model.int8.onnx" and "features" in str(e)


def test_refuses_no_features_for_a_graph_that_has_them(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    _rewrite(d, features=[])
    e = _refused(d, graph="int8")
    assert e.file == "model.int8.onnx" and "inputs" in str(e)


def test_refuses_classes_that_do_not_match_the_graph(model_dir: Path, tmp_path: Path) -> None:
    d = clone(model_dir, tmp_path / "m")
    meta = json.loads((d / METADATA_FILE).read_text())
    classes = meta["classes"]
    _rewrite(d, classes=classes[:-1], cheap_ok_classes=[c for c in meta["cheap_ok_classes"] if c in classes[:-1]])
    e = _refused(d, graph="int8")
    assert e.file == "model.int8.onnx" and "shape" in str(e)
