"""Load test of the gRPC service on loopback, against the in-process router on the same prompts.

Starts `router-serve` in a child process (so server and clients do not share a GIL) and runs N
concurrent clients (grpc.aio, one channel each) for a bounded time; in between it calls the
router in this process on the same prompts from as many threads as the server has workers, in
alternating rounds so that background load on a shared machine hits both sides alike. Prints the
figures and writes them to benchmarks/results/grpc_load.json.

Closed loop first: every client sends its next request as soon as the previous answer arrives,
which measures capacity; by Little's law its latency is clients / throughput. Then open loop:
the clients send, at Poisson times, half the capacity just measured (--open-load) or --rate
requests/s in total, which shows the latency a caller sees below saturation.

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
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from router_model.router import Router
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.service.gen.router.v1 import router_pb2_grpc
from router_model.settings import GRAPHS

ROOT = Path(__file__).resolve().parent.parent

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


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to split load between server and clients."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class Phase:
    """Figures accumulated over the rounds of one side (gRPC or in-process)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.server_us: list[int] = []
        self.errors: dict[str, int] = {}
        self.seconds = 0.0
        self.cpu = {"server": 0.0, "client": 0.0, "process": 0.0}

    def summary(self) -> dict:
        n = len(self.latencies)
        out = {
            "requests": n,
            "errors": sum(self.errors.values()),
            "errors_by_code": self.errors,
            "seconds": self.seconds,
            "throughput_rps": n / self.seconds if self.seconds else 0.0,
            **percentiles(self.latencies),
        }
        if self.server_us:
            server = sorted(self.server_us)
            out["server_p50_ms"] = server[len(server) // 2] / 1000
            out["server_p99_ms"] = server[int(0.99 * (len(server) - 1))] / 1000
        for who, cpu in self.cpu.items():
            if cpu:
                out[f"{who}_cpu_ms_per_request"] = 1000 * cpu / max(1, n)
        return out


class Clients:
    """N gRPC clients (grpc.aio, one channel each) in this process."""

    def __init__(self, address: str, prompts: list[str], args: argparse.Namespace, server_pid: int) -> None:
        self.prompts = prompts
        self.args = args
        self.server_pid = server_pid
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(args.clients)]
        self.stubs = [router_pb2_grpc.RouterStub(ch) for ch in self.channels]
        self.next = list(range(args.clients))

    async def run(self, seconds: float, phase: Phase, rate: float | None = None) -> None:
        """Load for `seconds`: closed loop, or open loop at `rate` requests/s in total."""
        args = self.args
        stop_at = time.perf_counter() + seconds

        async def one(k: int) -> None:
            prompt = self.prompts[self.next[k] % len(self.prompts)]
            self.next[k] += args.clients
            t0 = time.perf_counter()
            try:
                resp = await self.stubs[k].Route(pb.RouteRequest(prompt=prompt), timeout=10)
            except grpc.aio.AioRpcError as e:
                phase.errors[e.code().name] = phase.errors.get(e.code().name, 0) + 1
                return
            phase.latencies.append(time.perf_counter() - t0)
            phase.server_us.append(resp.latency_us)

        async def closed(k: int) -> None:
            while time.perf_counter() < stop_at:
                await one(k)

        async def open_loop(k: int) -> None:
            rng = random.Random(k)
            pending: set[asyncio.Task] = set()
            next_at = time.perf_counter()
            while True:
                next_at += rng.expovariate(rate / args.clients)
                if next_at >= stop_at:
                    break
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                task = asyncio.create_task(one(k))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        started = time.perf_counter()
        cpu0, server_cpu0 = time.process_time(), proc_cpu_seconds(self.server_pid)
        await asyncio.gather(*((open_loop if rate else closed)(k) for k in range(args.clients)))
        phase.seconds += time.perf_counter() - started
        phase.cpu["client"] += time.process_time() - cpu0
        phase.cpu["server"] += proc_cpu_seconds(self.server_pid) - server_cpu0


def in_process(router: Router, prompts: list[str], threads: int, seconds: float, phase: Phase) -> None:
    """The router called directly from `threads` threads, as the server's handlers call it."""
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine: list[float] = []
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            router.predict(prompts[i % len(prompts)])
            mine.append(time.perf_counter() - t0)
            i += threads
        with lock:
            phase.latencies.extend(mine)

    started, cpu0 = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    phase.seconds += time.perf_counter() - started
    phase.cpu["process"] += time.process_time() - cpu0


async def measure(
    address: str, server_pid: int, router: Router, prompts: list[str], args: argparse.Namespace
) -> tuple[dict, dict, dict | None]:
    """Closed loop: alternate gRPC and in-process rounds, so drifting background load hits both
    alike. Then open loop at a share of the capacity just measured (or at --rate)."""
    clients = Clients(address, prompts, args, server_pid)
    for ch in clients.channels:
        await ch.channel_ready()
    await clients.run(2.0, Phase())  # warm-up: connections, caches
    in_process(router, prompts, args.workers, 1.0, Phase())
    grpc_phase, local_phase = Phase(), Phase()
    per_round = args.duration / args.rounds
    for _ in range(args.rounds):
        await clients.run(per_round, grpc_phase)
        await asyncio.to_thread(in_process, router, prompts, args.workers, per_round, local_phase)
    closed = grpc_phase.summary()
    open_figures = None
    rate = args.rate or args.open_load * closed["throughput_rps"]
    if rate:
        open_phase = Phase()
        await clients.run(args.duration, open_phase, rate=rate)
        open_figures = {"rate_rps": rate, **open_phase.summary()}
    for ch in clients.channels:
        await ch.close()
    return closed, local_phase.summary(), open_figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=os.environ.get("ROUTER_MODEL_DIR"), required="ROUTER_MODEL_DIR" not in os.environ)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of gRPC load (after a 2 s warm-up), and as long in process")
    p.add_argument("--rounds", type=int, default=4, help="alternate gRPC and in-process this many times (default 4)")
    p.add_argument("--open-load", type=float, default=0.5,
                   help="then run open loop at this share of the measured closed-loop throughput (default 0.5; 0 = skip)")
    p.add_argument("--rate", type=float, default=None, help="open loop at this many requests/s in total instead")
    p.add_argument("--workers", type=int, default=4, help="router-serve --workers: routing computations at once (default 4, as router-serve)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, as router-serve)")
    p.add_argument("--graph", choices=GRAPHS, default=None)
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--prompts", type=Path, default=None, help="JSONL file with a 'prompt' field per line")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "grpc_load.json")
    args = p.parse_args(argv)
    args.model_dir = Path(args.model_dir)

    prompts, source = load_prompts(args.model_dir, args.tokens, 512, args.prompts)
    router = Router.load(args.model_dir, graph=args.graph, threads=args.threads)
    load_before = os.getloadavg()[0]
    proc, address = start_server(args)
    try:
        grpc_figures, inproc, open_figures = asyncio.run(measure(address, proc.pid, router, prompts, args))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    ratio = grpc_figures["throughput_rps"] / inproc["throughput_rps"]
    result = {
        "benchmark": "grpc_load",
        "clients": args.clients,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "server": {"workers": args.workers, "onnxruntime_threads": args.threads, "graph": router.graph},
        "artifact_version": router.version,
        "prompts": {"count": len(prompts), "target_tokens": args.tokens, "source": source},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            # 1-minute load average before the run and at its end (which includes this run's own
            # load): other work on a shared machine skews both sides.
            "loadavg_1m": [load_before, os.getloadavg()[0]],
        },
        "grpc": grpc_figures,
        "in_process": inproc,
        "throughput_ratio": ratio,
        "open_loop": open_figures,
        "targets": TARGETS,
        "meets": {
            "p50_ms": grpc_figures["p50_ms"] <= TARGETS["p50_ms"],
            "p99_ms": grpc_figures["p99_ms"] <= TARGETS["p99_ms"],
            "errors": grpc_figures["errors"] == TARGETS["errors"],
            "throughput_ratio": ratio >= TARGETS["throughput_ratio"],
        },
        "meets_open_loop": None if open_figures is None else {
            "p50_ms": open_figures["p50_ms"] <= TARGETS["p50_ms"],
            "p99_ms": open_figures["p99_ms"] <= TARGETS["p99_ms"],
            "errors": open_figures["errors"] == TARGETS["errors"],
        },
    }
    g = grpc_figures
    print(f"closed loop, {args.clients} clients, {args.duration:g} s, workers={args.workers}, ort threads={args.threads}, "
          f"load average {result['machine']['loadavg_1m'][0]:.1f}")
    print(f"gRPC:       {g['throughput_rps']:8.1f} req/s  p50 {g['p50_ms']:.2f} ms  p99 {g['p99_ms']:.2f} ms  "
          f"max {g['max_ms']:.2f} ms  errors {g['errors']}")
    print(f"            server-side p50 {g['server_p50_ms']:.2f} ms; CPU per request: server {g['server_cpu_ms_per_request']:.2f} ms, "
          f"clients {g['client_cpu_ms_per_request']:.2f} ms")
    print(f"in-process: {inproc['throughput_rps']:8.1f} req/s  p50 {inproc['p50_ms']:.2f} ms  p99 {inproc['p99_ms']:.2f} ms "
          f"({args.workers} threads; CPU per request {inproc['process_cpu_ms_per_request']:.2f} ms)")
    print(f"ratio {ratio:.2f}; meets targets: {result['meets']}")
    if open_figures:
        o = open_figures
        print(f"open loop at {o['rate_rps']:.0f} req/s: p50 {o['p50_ms']:.2f} ms  p99 {o['p99_ms']:.2f} ms  "
              f"max {o['max_ms']:.2f} ms  errors {o['errors']}; meets: {result['meets_open_loop']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
