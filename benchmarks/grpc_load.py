"""Load test of the gRPC service on loopback, against the in-process router on the same prompts.

Starts `router-serve` in a child process (so server and clients do not share a GIL), runs N
concurrent clients (grpc.aio, one channel each) for a bounded time, then measures the in-process
router on the same prompts with the same threads. Prints the figures and writes them to
benchmarks/results/grpc_load.json.

Closed loop by default: every client sends its next request as soon as the previous answer
arrives, which measures capacity, and by Little's law latency = clients / throughput. With
`--rate R` the clients instead send R requests/s in total at Poisson times (open loop), which
shows the latency a caller sees at that load.

    python benchmarks/grpc_load.py --model-dir runs/model [--clients 16] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router_model.router import Router  # noqa: E402
from router_model.service.gen.router.v1 import router_pb2 as pb  # noqa: E402
from router_model.service.gen.router.v1 import router_pb2_grpc  # noqa: E402

PROMPT_SOURCES = [
    ROOT.parent / "shared" / "data" / "routellm-evals" / "routellm-mmlu.normalized.jsonl",
    ROOT / "data" / "example-log.jsonl",
]
TARGETS = {"p50_ms": 8.0, "p99_ms": 20.0, "errors": 0, "throughput_ratio": 0.8}


def load_prompts(model_dir: Path, tokens: int, n: int, source: Path | None) -> tuple[list[str], str]:
    """Up to n prompts of about `tokens` tokens (by the artifact's tokenizer), nearest first."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    sources = [source] if source else PROMPT_SOURCES
    for path in sources:
        if path is None or not path.is_file():
            continue
        texts: list[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line) if line.strip() else {}
                if isinstance(row.get("prompt"), str) and row["prompt"].strip():
                    texts.append(row["prompt"])
                if len(texts) >= 20 * n:
                    break
        counts = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        ranked = sorted(range(len(texts)), key=lambda i: (abs(counts[i] - tokens), i))[:n]
        if ranked:
            picked = [texts[i] for i in ranked]
            # Short sources (the example log) are repeated into ~tokens-long prompts.
            picked = [_stretch(t, tok, tokens) for t in picked]
            return picked, str(path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path)
    raise SystemExit(f"no prompts found in {[str(p) for p in sources]}")


def _stretch(text: str, tok: Tokenizer, tokens: int) -> str:
    out = text
    while len(tok.encode(out, add_special_tokens=False).ids) < tokens * 0.85:
        out = f"{out}\n{text}"
    return out


def percentiles(values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    v = sorted(values_s)

    def q(p: float) -> float:
        return v[min(len(v) - 1, int(round(p * (len(v) - 1))))] * 1000

    return {"p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "max_ms": v[-1] * 1000}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, "-m", "router_model.service.cli", "--model-dir", str(args.model_dir), "--host", "127.0.0.1",
        "--port", "0", "--workers", str(args.workers), "--threads", str(args.threads), "--log-level", "WARNING",
    ]
    if args.graph:
        cmd += ["--graph", args.graph]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("router-serve listening on "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    address = line.split()[-1]
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + 120
        while stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            if time.monotonic() > deadline:
                raise SystemExit("server never became SERVING")
            time.sleep(0.1)
    return proc, address


async def run_clients(address: str, prompts: list[str], args: argparse.Namespace, seconds: float) -> dict:
    """N clients for `seconds`; closed loop, or open loop at args.rate requests/s in total."""
    latencies: list[float] = []
    server_us: list[int] = []
    errors: dict[str, int] = {}
    channels = [grpc.aio.insecure_channel(address) for _ in range(args.clients)]
    stubs = [router_pb2_grpc.RouterStub(ch) for ch in channels]
    for ch in channels:
        await ch.channel_ready()
    stop_at = time.perf_counter() + seconds

    async def one(stub: router_pb2_grpc.RouterStub, prompt: str) -> None:
        t0 = time.perf_counter()
        try:
            resp = await stub.Route(pb.RouteRequest(prompt=prompt), timeout=10)
        except grpc.aio.AioRpcError as e:
            errors[e.code().name] = errors.get(e.code().name, 0) + 1
            return
        latencies.append(time.perf_counter() - t0)
        server_us.append(resp.latency_us)

    async def closed(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            await one(stubs[k], prompts[i % len(prompts)])
            i += args.clients

    async def open_loop(k: int) -> None:
        rng = random.Random(k)
        per_client = args.rate / args.clients
        pending: set[asyncio.Task] = set()
        i = k
        next_at = time.perf_counter()
        while True:
            next_at += rng.expovariate(per_client)
            if next_at >= stop_at:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            task = asyncio.create_task(one(stubs[k], prompts[i % len(prompts)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += args.clients
        if pending:
            await asyncio.gather(*pending)

    started = time.perf_counter()
    await asyncio.gather(*((open_loop if args.rate else closed)(k) for k in range(args.clients)))
    elapsed = time.perf_counter() - started
    for ch in channels:
        await ch.close()
    server = sorted(server_us)
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_code": errors,
        "seconds": elapsed,
        "throughput_rps": len(latencies) / elapsed,
        **percentiles(latencies),
        "server_p50_ms": server[len(server) // 2] / 1000 if server else float("nan"),
        "server_p99_ms": server[int(0.99 * (len(server) - 1))] / 1000 if server else float("nan"),
    }


def in_process(args: argparse.Namespace, prompts: list[str], seconds: float) -> dict:
    """The router called directly from `workers` threads, as the server's handlers call it."""
    router = Router.load(args.model_dir, graph=args.graph, threads=args.threads)
    for p in prompts[:32]:
        router.predict(p)
    latencies: list[list[float]] = [[] for _ in range(args.workers)]
    stop_at = time.perf_counter() + seconds

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            router.predict(prompts[i % len(prompts)])
            latencies[k].append(time.perf_counter() - t0)
            i += args.workers

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = [x for xs in latencies for x in xs]
    return {"requests": len(flat), "seconds": elapsed, "throughput_rps": len(flat) / elapsed, **percentiles(flat),
            "threads": args.workers, "version": router.version, "graph": router.graph}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=os.environ.get("ROUTER_MODEL_DIR"), required="ROUTER_MODEL_DIR" not in os.environ)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load (after a 2 s warm-up)")
    p.add_argument("--rate", type=float, default=None, help="open loop: total requests/s (default: closed loop)")
    p.add_argument("--workers", type=int, default=2, help="server gRPC worker threads")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--graph", choices=["int8", "fp32"], default=None)
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--prompts", type=Path, default=None, help="JSONL file with a 'prompt' field per line")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "grpc_load.json")
    args = p.parse_args(argv)
    args.model_dir = Path(args.model_dir)

    prompts, source = load_prompts(args.model_dir, args.tokens, 512, args.prompts)
    proc, address = start_server(args)
    try:
        asyncio.run(run_clients(address, prompts, args, 2.0))  # warm-up: connections, caches
        grpc_figures = asyncio.run(run_clients(address, prompts, args, args.duration))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    inproc = in_process(args, prompts, min(args.duration, 10.0))
    ratio = grpc_figures["throughput_rps"] / inproc["throughput_rps"]
    result = {
        "benchmark": "grpc_load",
        "mode": f"open loop at {args.rate:g} req/s" if args.rate else "closed loop",
        "clients": args.clients,
        "duration_s": args.duration,
        "server": {"workers": args.workers, "onnxruntime_threads": args.threads, "graph": inproc["graph"]},
        "artifact_version": inproc["version"],
        "prompts": {"count": len(prompts), "target_tokens": args.tokens, "source": source},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "grpc": grpc_figures,
        "in_process": inproc,
        "throughput_ratio": ratio,
        "targets": TARGETS,
        "meets": {
            "p50_ms": grpc_figures["p50_ms"] <= TARGETS["p50_ms"],
            "p99_ms": grpc_figures["p99_ms"] <= TARGETS["p99_ms"],
            "errors": grpc_figures["errors"] == TARGETS["errors"],
            "throughput_ratio": ratio >= TARGETS["throughput_ratio"],
        },
    }
    g = grpc_figures
    print(f"{result['mode']}, {args.clients} clients, {args.duration:g} s, workers={args.workers}, ort threads={args.threads}")
    print(f"gRPC:       {g['throughput_rps']:8.1f} req/s  p50 {g['p50_ms']:.2f} ms  p99 {g['p99_ms']:.2f} ms  "
          f"max {g['max_ms']:.2f} ms  errors {g['errors']}  (server-side p50 {g['server_p50_ms']:.2f} ms)")
    print(f"in-process: {inproc['throughput_rps']:8.1f} req/s  p50 {inproc['p50_ms']:.2f} ms  p99 {inproc['p99_ms']:.2f} ms "
          f"({inproc['threads']} threads)")
    print(f"ratio {ratio:.2f}; meets targets: {result['meets']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
