"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader) calls the service from the .proto alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from service_helpers import serve

from router_model.router import Router
from router_model.service.config import ServerConfig

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; install Node.js >= 18 to run the cross-language client test")
    for pkg in ("@grpc/grpc-js", "@grpc/proto-loader"):
        if not (NODE_DIR / "node_modules" / pkg / "package.json").is_file():
            pytest.skip(f"{pkg} is not installed; run `npm ci --prefix tests/node` first")
    return node


def _run(node: str, address: str, request: dict) -> dict:
    proc = subprocess.run(
        [node, str(NODE_DIR / "client.js"), address, json.dumps(request)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_node_client_routes_and_checks_health(model_dir: Path) -> None:
    node = _node()
    router = Router.load(model_dir)
    with serve(ServerConfig(model_dir=model_dir, port=0)) as running:
        address = f"127.0.0.1:{running.port}"
        prompt = "Explain the difference between a process and a thread."
        out = _run(node, address, {"prompt": prompt, "request_id": "node-1", "tags": []})
        assert out["health"] == "SERVING"
        route = out["route"]
        want = router.predict(prompt)
        assert route["model"] == want.model
        assert route["p_cheap_ok"] == pytest.approx(want.p_cheap_ok, abs=1e-6)
        assert route["reason"] == "classifier"
        assert route["request_id"] == "node-1"
        assert route["artifact_version"] == router.version
        assert int(route["latency_us"]) > 0

        chat = {"messages": [{"role": "user", "parts": [
            {"type": "text", "text": "Describe this image."},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ]}]}
        route = _run(node, address, chat)["route"]
        assert (route["reason"], route["model"]) == ("vision", router.strong_model)
        assert "p_cheap_ok" not in route  # the optional field is unset

        err = _run(node, address, {"prompt": ""})["error"]
        assert err["code"] == "INVALID_ARGUMENT" and err["details"].startswith("prompt: ")
