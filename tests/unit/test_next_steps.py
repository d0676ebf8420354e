"""The "next:" commands router-train prints: the public-pair router is never put behind a gateway to OpenAI."""

from __future__ import annotations

import shlex
from pathlib import Path

from training.data.public import PUBLIC_PRICE_AS, STRONG_MODEL, WEAK_MODEL
from training.pipeline import next_steps


def _commands(text: str) -> list[list[str]]:
    return [shlex.split(ln) for ln in text.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")]


def test_the_public_router_is_not_sent_to_openai_the_day0_policy_is() -> None:
    text = next_steps(Path("artifacts/router"), tuple(PUBLIC_PRICE_AS.items()), pair=(WEAK_MODEL, STRONG_MODEL))
    gateway = [c for c in _commands(text) if c[0] == "router-gateway"]
    assert len(gateway) == 1
    assert gateway[0][gateway[0].index("--model-dir") + 1] == "artifacts/policy"
    assert ["router-policy", "build", "--out", "artifacts/policy"] in _commands(text)
    # what it does, said plainly
    assert f'forwards model "auto" as the router\'s strong model,\n  # here {STRONG_MODEL}' in text
    assert '"auto" as gpt-4o' in text and "docs/policy.md" in text
    # the trained router is still routed locally and served over gRPC in observation mode
    assert any(c[:3] == ["python", "-m", "router_model"] and "artifacts/router" in c for c in _commands(text))
    # the observed report prices the public names as the router was trained (router-serve's log), and the
    # policy's gateway writes its own log (gpt-4o names), reported without a mapping
    observed = {c[c.index("--log") + 1]: c for c in _commands(text) if c[:2] == ["router-cost", "observed"]}
    assert f"{WEAK_MODEL}=gpt-4o-mini" in observed["decisions.jsonl"]
    assert "--price-as" not in observed["decisions-policy.jsonl"]
    assert gateway[0][gateway[0].index("--decision-log") + 1] == "decisions-policy.jsonl"
    serve = next(c for c in _commands(text) if c[0] == "router-serve")
    assert serve[serve.index("--decision-log") + 1] == "decisions.jsonl"


def test_a_router_of_your_own_pair_says_what_the_gateway_forwards() -> None:
    text = next_steps(Path("models/router"), (), pair=("gpt-4o-mini", "gpt-4o"))
    gateway = [c for c in _commands(text) if c[0] == "router-gateway"]
    assert len(gateway) == 1 and gateway[0][gateway[0].index("--model-dir") + 1] == "models/router"
    assert 'every call is forwarded unchanged, model "auto" as its strong model, gpt-4o' in text
    assert "router-policy" not in text


def test_without_a_pair_the_gateway_line_is_generic() -> None:
    text = next_steps(Path("models/router"))
    assert '"auto" as the router\'s strong model' in text and "router-policy" not in text


def test_the_savings_line_says_when_the_shipped_head_saw_the_test_rows() -> None:
    held = next_steps(Path("models/router"), (), pair=("gpt-4o-mini", "gpt-4o"))
    refit = next_steps(Path("models/router"), (), pair=("gpt-4o-mini", "gpt-4o"), held_out=False)
    line = next(ln for ln in held.splitlines() if "router-cost savings" in ln)
    assert line.endswith("# dollars, on held-out rows")
    line = next(ln for ln in refit.splitlines() if "router-cost savings" in ln)
    assert "refit on them too" in line and "new labelled rows" in line
