"""What the gateway adds: latency and throughput through it vs straight to the same upstream.

Three processes on the same machine: a local OpenAI-compatible upstream answering after a fixed
delay (tests/gateway_upstream.py, default 50 ms), the gateway (`python -m router_model.gateway`,
route mode, decision log on), and this process running the clients. Each scenario
(non-streamed / streamed) runs twice, directly against the upstream and through the gateway,
with the same requests:

- closed loop: 16 concurrent clients back to back (each sends its next request as soon as the
  last one is answered), which saturates the machine and measures throughput;
- open loop: requests sent for 10 s at a fixed rate (default half the gateway's closed-loop
  throughput of the same scenario, the same rate direct and through the gateway) by up to 16
  concurrent client slots, so below saturation the added latency is the gateway's own cost, not
  queueing. Latency is counted from the request's scheduled send time, so a request held back by
  a busy client slot counts its wait. The non-streamed open loop runs a third time with a model
  the router does not own (passed through undecided): the proxying's share of the added latency.

The streamed latency is until `data: [DONE]` has been read. The router's decision time is
`Router.predict` of the same prompt in this process (one thread), timed before and after the
traffic. Trains nothing: pass a trained router with --model-dir.

Beside chat completions, `--apis` (default both) adds open-loop runs, at the same rate as the
chat scenario's, of the Responses API (`POST /v1/responses`, routed: non-streamed and streamed,
until `response.completed`) and of pass-through (`POST /v1/embeddings`, forwarded byte for byte
without a decision): the added latency p50/p99 of each beside the bare decision time.

    python benchmarks/gateway_overhead.py --model-dir artifacts/router
    python benchmarks/gateway_overhead.py --model-dir artifacts/router --apis responses   # no pass-through run
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
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
STREAM_CHUNKS = 10
PASSTHROUGH_MODEL = "gpt-3.5-turbo"  # not the router's strong model nor an alias: forwarded without a decision
EMBEDDING_MODEL = "text-embedding-3-small"
# Each API: its path under /v1, the end of a complete stream, and the key of a complete JSON answer.
APIS: dict[str, tuple[str, bytes, str]] = {
    "chat": ("/chat/completions", b"data: [DONE]", "choices"),
    "responses": ("/responses", b"event: response.completed\n", "output"),
    "passthrough": ("/embeddings", b"", "data"),
}
# The upstream is the fixed reference of every run: plain asyncio + h11 whatever is installed, so a
# faster HTTP stack in the environment changes only the gateway's side of the comparison.
UPSTREAM_UVICORN = {"loop": "asyncio", "http": "h11"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_upstream(port: int, delay: float) -> None:
    """Run the fake upstream (the child process's job)."""
    import uvicorn

    # The tests' local OpenAI-compatible upstream, loaded from its file (it is not part of the package).
    spec = importlib.util.spec_from_file_location("gateway_upstream", REPO / "tests" / "gateway_upstream.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway_upstream"] = module
    spec.loader.exec_module(module)
    FakeUpstream = module.FakeUpstream

    uvicorn.run(
        FakeUpstream(delay=delay).app(), host="127.0.0.1", port=port, log_level="warning", access_log=False,
        **UPSTREAM_UVICORN,
    )


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


def _warmup_count(clients: int) -> int:
    return min(2 * clients, 32)


async def _run(
    base: str, body: dict[str, Any], stream: bool, n: int, clients: int, rate: float | None = None, api: str = "chat"
) -> dict[str, Any]:
    """`n` requests by `clients` concurrent slots: back to back (rate None) or sent at `rate` per second."""
    path, end, key = APIS[api]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    payload = json.dumps({**body, "stream": stream} if api != "passthrough" else body).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench", "x-fake-chunks": str(STREAM_CHUNKS)}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    late = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(t0: float | None = None) -> None:
            t0 = time.perf_counter() if t0 is None else t0
            try:
                if stream:
                    async with client.stream("POST", path, content=payload, headers=headers) as resp:
                        data = await resp.aread()
                    ok = resp.status_code == 200 and end in data
                else:
                    resp = await client.post(path, content=payload, headers=headers)
                    ok = resp.status_code == 200 and bool(resp.json().get(key))
                kind = "" if ok else f"status_{resp.status_code}"
            except httpx.HTTPError as exc:
                kind = exc.__class__.__name__
            if kind:
                errors[kind] = errors.get(kind, 0) + 1
            else:
                latencies.append(time.perf_counter() - t0)

        for _ in range(_warmup_count(clients)):  # warm-up: connections, threads, caches
            await one()
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        if rate is None:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    await one()

            await asyncio.gather(*(worker() for _ in range(clients)))
        else:
            slots = asyncio.Semaphore(clients)
            tasks: list[asyncio.Task[None]] = []

            async def slot(t0: float) -> None:
                try:
                    await one(t0)
                finally:
                    slots.release()

            for i in range(n):
                due = started + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                await slots.acquire()
                if time.perf_counter() - due > 0.002:
                    late += 1
                tasks.append(asyncio.create_task(slot(due)))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    arr = np.asarray(latencies) * 1000
    out: dict[str, Any] = {
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
    if rate is not None:
        out["offered_rps"] = round(rate, 1)
        out["started_late_over_2ms"] = late  # a slot was busy or this process was descheduled
    return out


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), to report the gateway's CPU per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _decision_seconds(gateway: str) -> tuple[float, float] | None:
    """(sum, count) of the gateway's router_gateway_decision_seconds histogram."""
    try:
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("router_gateway_decision_seconds_sum", "router_gateway_decision_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    if len(values) != 2:
        return None
    return values["router_gateway_decision_seconds_sum"], values["router_gateway_decision_seconds_count"]


def _through_gateway(
    gateway: str, pid: int, body: dict[str, Any], stream: bool, n: int, clients: int, rate: float | None, api: str = "chat"
) -> dict[str, Any]:
    cpu0, dec0 = _cpu_seconds(pid), _decision_seconds(gateway)
    out = asyncio.run(_run(f"{gateway}/v1", body, stream, n, clients, rate, api))
    cpu1, dec1 = _cpu_seconds(pid), _decision_seconds(gateway)
    total = n + _warmup_count(clients)
    if cpu0 is not None and cpu1 is not None:
        out["gateway_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / total, 2)
    if dec0 is not None and dec1 is not None and dec1[1] > dec0[1]:
        # Router.predict inside the gateway, worker thread included, under this run's load
        out["gateway_decision_mean_ms"] = round((dec1[0] - dec0[0]) * 1000 / (dec1[1] - dec0[1]), 2)
    return out


def _predict_timings(router: Any, messages: list[dict[str, Any]], n: int = 200) -> list[float]:
    router.predict(messages)
    timings = []
    for _ in range(n):
        t0 = time.perf_counter()
        router.predict(messages)
        timings.append((time.perf_counter() - t0) * 1000)
    return timings


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("starlette", "uvicorn", "httpx", "onnxruntime", "prometheus_client", "uvloop", "httptools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    return out


def _compare(direct: dict[str, Any], through: dict[str, Any]) -> dict[str, Any]:
    return {
        "direct": direct,
        "gateway": through,
        "added_p50_ms": round(through["p50_ms"] - direct["p50_ms"], 2),
        "added_p99_ms": round(through["p99_ms"] - direct["p99_ms"], 2),
        "throughput_ratio": round(through["throughput_rps"] / direct["throughput_rps"], 3),
    }


def _table(runs: dict[str, Any]) -> str:
    head = "| run | direct p50 / p99 | gateway p50 / p99 | added p50 / p99 | throughput direct -> gateway | errors | gateway CPU/req |"
    lines = [head, "|" + "---|" * 7]
    for name, r in runs.items():
        d, g = r["direct"], r["gateway"]
        rate = f" (offered {g['offered_rps']:.0f}/s)" if "offered_rps" in g else f" (ratio {r['throughput_ratio']:.2f})"
        lines.append(
            f"| {name} | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms | {g['p50_ms']:.1f} / {g['p99_ms']:.1f} ms "
            f"| {r['added_p50_ms']:+.1f} / {r['added_p99_ms']:+.1f} ms "
            f"| {d['throughput_rps']:.0f} -> {g['throughput_rps']:.0f} req/s{rate} "
            f"| {d['error_count']} / {g['error_count']} | {g.get('gateway_cpu_ms_per_request', float('nan')):.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    default_dir = REPO / "artifacts" / "router"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=default_dir if default_dir.exists() else None)
    p.add_argument("--requests", type=int, default=600, help="requests per closed-loop run (after warm-up)")
    p.add_argument("--open-seconds", type=float, default=10.0, help="length of an open-loop run (rate x seconds requests)")
    p.add_argument("--open-requests", type=int, default=600, help="at most this many requests per open-loop run")
    p.add_argument("--open-fraction", type=float, default=0.5,
                   help="open-loop rate as a fraction of the gateway's closed-loop throughput of the same scenario")
    p.add_argument("--open-rate", type=float, help="open-loop rate in requests/s (overrides --open-fraction)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--delay", type=float, default=0.05, help="upstream answer time, seconds")
    p.add_argument("--mode", choices=("route", "observe"), default="route")
    p.add_argument("--apis", default="responses,passthrough",
                   help="open-loop runs beside chat completions at the same rate: responses, passthrough (comma-separated; '' for none)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.delay)
        return 0
    if args.model_dir is None:
        p.error("no router: pass --model-dir DIR (artifacts/router is absent)")
    extra_apis = [a.strip() for a in args.apis.split(",") if a.strip()]
    unknown = sorted(set(extra_apis) - {"responses", "passthrough"})
    if unknown:
        p.error(f"--apis: unknown {unknown}; expected responses, passthrough")

    from router_model import Router

    router = Router.load(args.model_dir)
    messages = [{"role": "user", "content": PROMPT}]
    load_before = os.getloadavg()
    predict_before = _predict_timings(router, messages)
    up_port, gw_port = _free_port(), _free_port()
    procs: list[subprocess.Popen] = []
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-bench-{os.getpid()}.jsonl"
    started = time.monotonic()
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
        body = {"model": router.strong_model, "messages": messages, "max_tokens": 64}
        runs: dict[str, Any] = {}
        for stream in (False, True):
            name = "stream" if stream else "non_stream"
            direct = asyncio.run(_run(upstream, body, stream, args.requests, args.clients))
            through = _through_gateway(gateway, procs[1].pid, body, stream, args.requests, args.clients, None)
            runs[f"closed_{name}"] = _compare(direct, through)
            rate = args.open_rate or args.open_fraction * through["throughput_rps"]
            n_open = max(50, min(args.open_requests, round(rate * args.open_seconds)))
            direct = asyncio.run(_run(upstream, body, stream, n_open, args.clients, rate))
            through = _through_gateway(gateway, procs[1].pid, body, stream, n_open, args.clients, rate)
            runs[f"open_{name}"] = _compare(direct, through)
            if not stream:  # the proxying alone: a model the router does not own passes through undecided
                unrouted = {**body, "model": PASSTHROUGH_MODEL}
                through = _through_gateway(gateway, procs[1].pid, unrouted, stream, n_open, args.clients, rate)
                runs[f"open_{name}_passthrough"] = _compare(direct, through)
            if "responses" in extra_apis:  # the Responses API, routed, at the same rate
                asked = {"model": router.strong_model, "input": PROMPT, "max_output_tokens": 64}
                direct = asyncio.run(_run(upstream, asked, stream, n_open, args.clients, rate, "responses"))
                through = _through_gateway(gateway, procs[1].pid, asked, stream, n_open, args.clients, rate, "responses")
                runs[f"open_responses_{name}"] = _compare(direct, through)
            if "passthrough" in extra_apis and not stream:  # another endpoint, forwarded byte for byte
                asked = {"model": EMBEDDING_MODEL, "input": PROMPT}
                direct = asyncio.run(_run(upstream, asked, False, n_open, args.clients, rate, "passthrough"))
                through = _through_gateway(gateway, procs[1].pid, asked, False, n_open, args.clients, rate, "passthrough")
                runs["open_embeddings_passthrough"] = _compare(direct, through)
            print(f"{name}: done ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_path.unlink(missing_ok=True)
    load_after = os.getloadavg()
    predict_after = _predict_timings(router, messages)
    timings = predict_before + predict_after
    predict = {
        "p50_ms": round(float(np.percentile(timings, 50)), 2),
        "p99_ms": round(float(np.percentile(timings, 99)), 2),
        "p50_before_traffic_ms": round(float(np.percentile(predict_before, 50)), 2),
        "p50_after_traffic_ms": round(float(np.percentile(predict_after, 50)), 2),
    }
    decision = router.predict(messages)
    # The target, below saturation: added p50 <= decision time + 2 ms, added p99 <= twice that, no errors.
    target_p50 = predict["p50_ms"] + 2.0
    target = {"added_p50_ms_max": round(target_p50, 2), "added_p99_ms_max": round(2 * target_p50, 2), "errors": 0}
    for name in ("open_non_stream", "open_stream", "open_responses_non_stream", "open_responses_stream"):
        if name not in runs:
            continue
        r = runs[name]
        r["meets_target"] = bool(
            r["added_p50_ms"] <= target["added_p50_ms_max"] and r["added_p99_ms"] <= target["added_p99_ms_max"]
            and r["gateway"]["error_count"] == 0 and r["direct"]["error_count"] == 0
        )
    gateway_stack = {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }
    result = {
        "benchmark": "gateway_overhead",
        "conditions": {
            "cpu_cores": os.cpu_count(),
            "processes": "upstream, gateway (uvicorn, 1 worker) and the clients on the same machine, loopback HTTP/1.1",
            "clients": args.clients,
            "requests_per_closed_run": args.requests,
            "requests_per_open_run": {k: r["gateway"]["requests"] for k, r in runs.items() if k.startswith("open_")},
            "open_loop_seconds": args.open_seconds,
            "open_loop_rate": f"{args.open_rate} req/s" if args.open_rate else f"{args.open_fraction} x the gateway's closed-loop throughput",
            "warmup_requests": _warmup_count(args.clients),
            "upstream_delay_ms": args.delay * 1000,
            "upstream_uvicorn": UPSTREAM_UVICORN,
            "gateway_uvicorn": gateway_stack,
            "stream_chunks": STREAM_CHUNKS,
            "gateway_mode": args.mode,
            "extra_apis": extra_apis,
            "decision_log": True,
            "router_graph": router.graph,
            "artifact_version": router.version,
            "prompt_tokens": decision.prompt_tokens,
            "routed_to": decision.model,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "versions": _versions(),
        },
        "router_predict_in_process": predict,
        "target": target,
        "runs": runs,
    }
    print(_table(runs))
    print(
        f"Router.predict in process, 1 thread: p50 {predict['p50_ms']:.2f} ms, p99 {predict['p99_ms']:.2f} ms; "
        f"target below saturation: added p50 <= {target['added_p50_ms_max']:.1f} ms, p99 <= {target['added_p99_ms_max']:.1f} ms, "
        f"0 errors: non-streamed {'met' if runs['open_non_stream']['meets_target'] else 'NOT met'}, "
        f"streamed {'met' if runs['open_stream']['meets_target'] else 'NOT met'}"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {decision.prompt_tokens} prompt tokens, {router.graph} graph")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
