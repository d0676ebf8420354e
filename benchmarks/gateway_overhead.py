"""What the gateway adds: latency and throughput through it vs straight to the same upstream.

Three processes on the same machine: a local OpenAI-compatible upstream answering after a fixed
delay (tests/gateway_upstream.py, default 50 ms), the gateway (`python -m router_model.gateway`,
route mode, decision log on), and this process running the clients (16 concurrent asyncio
clients by default, back to back). Each scenario (non-streamed / streamed) runs once directly
against the upstream and once through the gateway with the same requests; the streamed latency
is until `data: [DONE]` has been read. Trains nothing: pass a trained router with --model-dir.

    python benchmarks/gateway_overhead.py --model-dir artifacts/router
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gateway_overhead.json"
PROMPT = (
    "Classify the sentiment of the following customer review as positive, negative or neutral, and give a one-line "
    "reason: 'The battery lasts all day, the screen is gorgeous, but the speaker crackles at high volume and the "
    "charger stopped working after a week.'"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_upstream(port: int, delay: float) -> None:
    """Run the fake upstream (the child process's job)."""
    import uvicorn

    import importlib.util

    # The tests' local OpenAI-compatible upstream, loaded from its file (it is not part of the package).
    spec = importlib.util.spec_from_file_location("gateway_upstream", REPO / "tests" / "gateway_upstream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway_upstream"] = module
    spec.loader.exec_module(module)
    FakeUpstream = module.FakeUpstream

    uvicorn.run(FakeUpstream(delay=delay).app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


async def _run(base: str, body: dict[str, Any], stream: bool, n: int, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    todo = iter(range(n))
    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench", "x-fake-chunks": "10"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                if stream:
                    async with client.stream("POST", "/chat/completions", content=payload, headers=headers) as resp:
                        data = await resp.aread()
                    ok = resp.status_code == 200 and data.rstrip().endswith(b"data: [DONE]")
                else:
                    resp = await client.post("/chat/completions", content=payload, headers=headers)
                    ok = resp.status_code == 200 and bool(resp.json().get("choices"))
                kind = "" if ok else f"status_{resp.status_code}"
            except httpx.HTTPError as exc:
                kind = exc.__class__.__name__
            if kind:
                errors[kind] = errors.get(kind, 0) + 1
            else:
                latencies.append(time.perf_counter() - t0)

        async def worker() -> None:
            for _ in todo:
                await one()

        for _ in range(min(2 * clients, 32)):  # warm-up: connections, threads, caches
            await one()
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    arr = np.asarray(latencies) * 1000
    return {
        "requests": n,
        "ok": int(arr.size),
        "errors": dict(errors),
        "error_count": int(sum(errors.values())),
        "wall_s": round(wall, 3),
        "throughput_rps": round(arr.size / wall, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), to report the gateway's CPU per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("starlette", "uvicorn", "httpx", "onnxruntime", "prometheus_client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    default_dir = REPO / "artifacts" / "router"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=default_dir if default_dir.exists() else None)
    p.add_argument("--requests", type=int, default=800, help="requests per run (after warm-up)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--delay", type=float, default=0.05, help="upstream answer time, seconds")
    p.add_argument("--mode", choices=("route", "observe"), default="route")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.delay)
        return 0
    if args.model_dir is None:
        p.error("no router: pass --model-dir DIR (artifacts/router is absent)")

    from router_model import Router

    router = Router.load(args.model_dir)
    load_before = os.getloadavg()
    up_port, gw_port = _free_port(), _free_port()
    procs: list[subprocess.Popen] = []
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-bench-{os.getpid()}.jsonl"
    try:
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(up_port), "--delay", str(args.delay)], cwd=REPO
        ))
        upstream = f"http://127.0.0.1:{up_port}/v1"
        _wait_ready(f"{upstream}/models", procs[0])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "router_model.gateway", "--model-dir", str(args.model_dir), "--upstream", upstream,
             "--port", str(gw_port), "--mode", args.mode, "--decision-log", str(log_path), "--log-level", "warning"],
            cwd=REPO,
        ))
        gateway = f"http://127.0.0.1:{gw_port}"
        _wait_ready(f"{gateway}/readyz", procs[1])
        body = {"model": router.strong_model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
        runs: dict[str, Any] = {}
        for stream in (False, True):
            name = "stream" if stream else "non_stream"
            direct = asyncio.run(_run(upstream, body, stream, args.requests, args.clients))
            cpu0 = _cpu_seconds(procs[1].pid)
            through = asyncio.run(_run(f"{gateway}/v1", body, stream, args.requests, args.clients))
            cpu1 = _cpu_seconds(procs[1].pid)
            warm = min(2 * args.clients, 32)
            if cpu0 is not None and cpu1 is not None:
                through["gateway_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / (args.requests + warm), 2)
            runs[name] = {
                "direct": direct,
                "gateway": through,
                "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 2),
                "added_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 2),
                "throughput_ratio": round(through["throughput_rps"] / direct["throughput_rps"], 3),
            }
            print(
                f"{name:>10}: direct p50/p99 {direct['p50_ms']:.1f}/{direct['p99_ms']:.1f} ms {direct['throughput_rps']:.0f} req/s, "
                f"gateway {through['p50_ms']:.1f}/{through['p99_ms']:.1f} ms {through['throughput_rps']:.0f} req/s; "
                f"added p50 {runs[name]['added_p50_ms']:+.1f} ms, p99 {runs[name]['added_p99_ms']:+.1f} ms; "
                f"throughput ratio {runs[name]['throughput_ratio']:.2f}; errors {direct['error_count']} / {through['error_count']}; "
                f"gateway CPU {through.get('gateway_cpu_ms_per_request', float('nan')):.1f} ms/request"
            )
        decision = router.predict(body["messages"])
        timings = []
        for _ in range(200):
            t0 = time.perf_counter()
            router.predict(body["messages"])
            timings.append((time.perf_counter() - t0) * 1000)
        predict_ms = [round(float(np.percentile(timings, q)), 2) for q in (50, 99)]
        print(f"Router.predict in process, 1 thread: p50 {predict_ms[0]:.2f} ms, p99 {predict_ms[1]:.2f} ms")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_path.unlink(missing_ok=True)
    result = {
        "benchmark": "gateway_overhead",
        "conditions": {
            "cpu_cores": os.cpu_count(),
            "processes": "upstream, gateway (uvicorn, 1 worker) and the clients on the same machine, loopback HTTP/1.1",
            "clients": args.clients,
            "requests_per_run": args.requests,
            "warmup_requests": min(2 * args.clients, 32),
            "upstream_delay_ms": args.delay * 1000,
            "stream_chunks": 10,
            "gateway_mode": args.mode,
            "decision_log": True,
            "router_graph": router.graph,
            "artifact_version": router.version,
            "prompt_tokens": decision.prompt_tokens,
            "routed_to": decision.model,
            "router_predict_p50_p99_ms_in_process": predict_ms,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "versions": _versions(),
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
