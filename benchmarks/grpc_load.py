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

Both server modes run side by side in one run: a second `router-serve --batching` child
(router_model/batching.py) takes its turn in every round, and the in-process side is measured
both from `--workers` threads and from as many threads as there are clients (the batching
target's baseline). A single-client phase per mode shows the latency at low load, where the
batcher must not add its window.

    python benchmarks/grpc_load.py --model-dir artifacts/router [--clients 16] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from router_model.router import Router
from router_model.settings import GRAPHS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from grpc_load_sides import Clients, Phase, in_process, in_process_batched  # noqa: E402 - beside this script

PROMPT_SOURCES = [
    ROOT.parent / "shared" / "data" / "routellm-evals" / "routellm-mmlu.normalized.jsonl",
    ROOT / "data" / "example-log.jsonl",
]
TARGETS = {"p50_ms": 8.0, "p99_ms": 20.0, "errors": 0, "throughput_ratio": 0.8}
# Issue 17: batched gRPC at 16 clients >= 1.2x 16 in-process threads without batching; p99 at half
# the batched capacity (open loop) <= 15 ms; no errors.
BATCHING_TARGETS = {"throughput_ratio_vs_inprocess_16": 1.2, "open_loop_p99_ms": 15.0, "errors": 0}


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


def start_server(args: argparse.Namespace, batching: bool = False) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable, "-m", "router_model.service.cli", "--model-dir", str(args.model_dir), "--host", "127.0.0.1",
        "--port", "0", "--workers", str(args.workers), "--threads", str(args.threads), "--log-level", "WARNING",
    ]
    if args.graph:
        cmd += ["--graph", args.graph]
    if batching:
        cmd += ["--batching", "--batch-max-delay-ms", str(args.batch_max_delay_ms), "--batch-max-size",
                str(args.batch_max_size), "--batch-runners", str(args.batch_runners)]
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


def graph_cost(router: Router, prompts: list[str], sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> dict[str, float]:
    """CPU milliseconds per request of one graph run over N prepared requests (one thread; best of
    3 repeats): what batching can save in the model itself, apart from the service."""
    prepared = [router.prepare(p) for p in prompts[:64]]
    out = {}
    for n in sizes:
        best = float("inf")
        for _ in range(3):
            reps = max(1, 32 // n)
            t0 = time.process_time()
            for r in range(reps):
                router.decide(prepared[r % 2 * 32 : r % 2 * 32 + n])
            best = min(best, (time.process_time() - t0) / (reps * n))
        out[str(n)] = 1000 * best
    return out


async def measure(
    servers: dict[str, tuple[str, int]], router: Router, prompts: list[str], args: argparse.Namespace
) -> dict[str, dict]:
    """Closed loop: alternate both gRPC modes and the in-process sides, so drifting background
    load hits all alike. Then, per mode, open loop at a share of its own capacity (or at
    --rate) and a single-client phase (latency at low load)."""
    clients = {mode: Clients(address, prompts, args, pid) for mode, (address, pid) in servers.items()}
    for c in clients.values():
        for ch in c.channels:
            await ch.channel_ready()
        await c.run(2.0, Phase())  # warm-up: connections, caches
    in_process(router, prompts, args.workers, 1.0, Phase())
    phases = {f"grpc_{mode}": Phase() for mode in clients}
    phases.update(in_process=Phase(), in_process_clients=Phase(), in_process_batched=Phase())
    per_round = args.duration / args.rounds
    for _ in range(args.rounds):
        for mode, c in clients.items():
            await c.run(per_round, phases[f"grpc_{mode}"])
        await asyncio.to_thread(in_process, router, prompts, args.workers, per_round, phases["in_process"])
        await asyncio.to_thread(in_process, router, prompts, args.clients, per_round, phases["in_process_clients"])
        if args.inprocess_batched:
            await asyncio.to_thread(in_process_batched, router, prompts, args.clients, per_round, phases["in_process_batched"], args)
    out = {name: ph.summary() for name, ph in phases.items() if ph.seconds}
    for mode, c in clients.items():
        rate = args.rate or args.open_load * out[f"grpc_{mode}"]["throughput_rps"]
        if rate:
            open_phase = Phase()
            await c.run(args.duration, open_phase, rate=rate)
            out[f"open_{mode}"] = {"rate_rps": rate, **open_phase.summary()}
        if args.low_load_seconds:
            low = Phase()
            await c.run(args.low_load_seconds, low, clients=1)
            out[f"low_{mode}"] = low.summary()
    for c in clients.values():
        for ch in c.channels:
            await ch.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=os.environ.get("ROUTER_MODEL_DIR"), required="ROUTER_MODEL_DIR" not in os.environ)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of gRPC load per mode (after a 2 s warm-up), and as long per in-process side")
    p.add_argument("--rounds", type=int, default=4, help="alternate the gRPC modes and in-process sides this many times (default 4)")
    p.add_argument("--open-load", type=float, default=0.5,
                   help="then run open loop at this share of each mode's measured closed-loop throughput (default 0.5; 0 = skip)")
    p.add_argument("--rate", type=float, default=None, help="open loop at this many requests/s in total instead")
    p.add_argument("--low-load-seconds", type=float, default=5.0, help="single-client closed loop per mode (default 5 s; 0 = skip)")
    p.add_argument("--workers", type=int, default=4, help="router-serve --workers: routing computations at once (default 4, as router-serve)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, as router-serve)")
    p.add_argument("--graph", choices=GRAPHS, default=None)
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--prompts", type=Path, default=None, help="JSONL file with a 'prompt' field per line")
    p.add_argument("--batch-max-delay-ms", type=float, default=2.0, help="the batched server's --batch-max-delay-ms (default 2)")
    p.add_argument("--batch-max-size", type=int, default=32, help="the batched server's --batch-max-size (default 32)")
    p.add_argument("--batch-runners", type=int, default=2, help="the batched server's --batch-runners (default 2)")
    p.add_argument("--no-batching", dest="batching", action="store_false", help="measure only the unbatched server")
    p.add_argument("--inprocess-batched", action="store_true", help="also time the batcher in process (no gRPC) from --clients threads")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "grpc_load.json")
    args = p.parse_args(argv)
    args.model_dir = Path(args.model_dir)

    prompts, source = load_prompts(args.model_dir, args.tokens, 512, args.prompts)
    router = Router.load(args.model_dir, graph=args.graph, threads=args.threads)
    load_before = os.getloadavg()[0]
    graph_ms = graph_cost(router, prompts)
    procs: dict[str, subprocess.Popen] = {}
    servers: dict[str, tuple[str, int]] = {}
    try:
        for mode in ("unbatched", "batched") if args.batching else ("unbatched",):
            proc, address = start_server(args, batching=mode == "batched")
            procs[mode], servers[mode] = proc, (address, proc.pid)
        figures = asyncio.run(measure(servers, router, prompts, args))
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)
    grpc_figures, inproc, open_figures = figures["grpc_unbatched"], figures["in_process"], figures.get("open_unbatched")
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
        "low_load": figures.get("low_unbatched"),
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
        "in_process_clients_threads": figures["in_process_clients"],
        "graph_cpu_ms_per_request_by_batch_size": graph_ms,
    }
    if "in_process_batched" in figures:
        result["in_process_batched"] = figures["in_process_batched"]
    if args.batching:
        b, base = figures["grpc_batched"], figures["in_process_clients"]
        b_open, b_low = figures.get("open_batched"), figures.get("low_batched")
        b_ratio = b["throughput_rps"] / base["throughput_rps"]
        result["batching"] = {
            "config": {"max_delay_ms": args.batch_max_delay_ms, "max_size": args.batch_max_size, "runners": args.batch_runners},
            "grpc": b,
            "open_loop": b_open,
            "low_load": b_low,
            "throughput_ratio_vs_inprocess_16": b_ratio,
            "throughput_ratio_vs_unbatched_grpc": b["throughput_rps"] / grpc_figures["throughput_rps"],
            "targets": BATCHING_TARGETS,
            "meets": {
                "throughput_ratio_vs_inprocess_16": b_ratio >= BATCHING_TARGETS["throughput_ratio_vs_inprocess_16"],
                "open_loop_p99_ms": None if b_open is None else b_open["p99_ms"] <= BATCHING_TARGETS["open_loop_p99_ms"],
                "errors": b["errors"] + (b_open["errors"] if b_open else 0) == BATCHING_TARGETS["errors"],
                "low_load_p50_not_higher": None if not (b_low and figures.get("low_unbatched"))
                else b_low["p50_ms"] <= figures["low_unbatched"]["p50_ms"] * 1.1,
            },
        }

    def line(label: str, f: dict) -> str:
        return (f"{label:<34}{f['throughput_rps']:8.1f} req/s  p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  "
                f"max {f['max_ms']:6.2f} ms  errors {f['errors']}")

    g = grpc_figures
    print(f"closed loop, {args.clients} clients, {args.duration:g} s per side, workers={args.workers}, ort threads={args.threads}, "
          f"load average {result['machine']['loadavg_1m'][0]:.1f} -> {result['machine']['loadavg_1m'][1]:.1f}")
    print(line("gRPC (unbatched):", g))
    print(f"{'':<34}server-side p50 {g['server_p50_ms']:.2f} ms; CPU per request: server {g['server_cpu_ms_per_request']:.2f} ms, "
          f"clients {g['client_cpu_ms_per_request']:.2f} ms")
    if args.batching:
        b = figures["grpc_batched"]
        print(line("gRPC (batched):", b))
        print(f"{'':<34}server-side p50 {b['server_p50_ms']:.2f} ms; CPU per request: server {b['server_cpu_ms_per_request']:.2f} ms")
    print(line(f"in process, {args.workers} threads:", inproc))
    print(line(f"in process, {args.clients} threads:", figures["in_process_clients"]))
    if "in_process_batched" in figures:
        print(line(f"in process, {args.clients} threads, batcher:", figures["in_process_batched"]))
    print(f"ratio gRPC/in-process ({args.workers} threads) {ratio:.2f}; meets targets: {result['meets']}")
    print("graph CPU ms per request by batch size: " + ", ".join(f"{n}: {ms:.2f}" for n, ms in graph_ms.items()))
    for mode in ("unbatched", "batched"):
        if f"open_{mode}" in figures:
            o = figures[f"open_{mode}"]
            print(line(f"open loop {mode} at {o['rate_rps']:.0f} req/s:", o))
        if f"low_{mode}" in figures:
            print(line(f"1 client, {mode}:", figures[f"low_{mode}"]))
    if args.batching:
        bt = result["batching"]
        print(f"batched gRPC / in-process {args.clients} threads: {bt['throughput_ratio_vs_inprocess_16']:.2f} "
              f"(/ unbatched gRPC: {bt['throughput_ratio_vs_unbatched_grpc']:.2f}); meets: {bt['meets']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
