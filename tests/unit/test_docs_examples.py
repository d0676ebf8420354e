"""The gateway's Python examples in README.md and docs/gateway.md run as written.

Each Python block that talks to the gateway reads its address from `ROUTER_GATEWAY_URL`; this test
copies every such block out of the two files and runs it, in a fresh namespace and a scratch
directory, against a gateway (the toy router, route mode) in front of the local upstream
(tests/gateway_upstream.py), which speaks chat completions, the Responses API, embeddings, files,
audio and Anthropic's Messages API. A block that makes a client for the gateway without reading
`ROUTER_GATEWAY_URL` fails the test: it would not be run.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from gateway_harness import running_gateway
from gateway_upstream import serve_fake_upstream

from router_model import Router
from router_model.gateway.config import GatewayConfig, Upstream

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "docs" / "gateway.md")
ENV = "ROUTER_GATEWAY_URL"
CLIENT = re.compile(r"\b(OpenAI|Anthropic)\(")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of `path`."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def gateway_examples() -> list[tuple[str, str]]:
    return [(f"{path.name}:{line}", code) for path in DOCS for line, code in python_blocks(path) if ENV in code]


def test_every_gateway_client_example_is_run() -> None:
    untested = [f"{path.name}:{line}" for path in DOCS for line, code in python_blocks(path)
                if CLIENT.search(code) and ENV not in code]
    assert untested == [], f"examples that make a gateway client without reading {ENV} (so not run here)"
    names = [name for name, _ in gateway_examples()]
    assert any(n.startswith("README.md") for n in names)
    every = "\n".join(code for _, code in gateway_examples())
    for call in ("chat.completions.create", "responses.create", "embeddings.create", "messages.create", "messages.stream"):
        assert call in every, f"no runnable example of {call}"


@pytest.fixture(scope="module")
def gateway(toy_model_dir, tmp_path_factory):
    with serve_fake_upstream() as fake:
        log = tmp_path_factory.mktemp("docs-examples") / "decisions.jsonl"
        config = GatewayConfig(upstream=Upstream(fake.url), anthropic=Upstream(fake.url), mode="route", decision_log=log)
        with running_gateway(config, Router.load(toy_model_dir)) as gw:
            yield gw, fake


@pytest.mark.parametrize(("name", "code"), gateway_examples(), ids=[n for n, _ in gateway_examples()])
def test_gateway_example_runs(name: str, code: str, gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake = gateway
    monkeypatch.setenv(ENV, gw.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-example")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-docs-example")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "batch.jsonl").write_text('{"custom_id": "1"}\n')  # the file the upload example sends
    before = len(fake.received)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": "__main__"})  # noqa: S102 - the documented example itself
    calls = fake.received[before:]
    assert calls, f"{name} reached no upstream"
    keys = {"Bearer sk-docs-example", "Bearer sk-ant-docs-example", "sk-ant-docs-example"}  # x-api-key or a bearer token
    assert all(r.headers.get("authorization") in keys or r.headers.get("x-api-key") in keys for r in calls), \
        "the example's key did not reach the upstream"
    if "print(" in code:
        assert out.getvalue().strip(), f"{name} printed nothing"
