"""The two sides benchmarks/grpc_load.py times, and the figures they accumulate.

`Clients`: N gRPC clients (grpc.aio, one channel each) against a `router-serve` child, closed loop
or open loop at Poisson times; `in_process` / `in_process_batched`: the router called directly from
threads, as the server's handlers call it (through one in-process Batcher for the latter). Each
adds its latencies, errors, wall time and CPU time (`proc_cpu_seconds` for the server) to a `Phase`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from router_model.router import Router
from router_model.service.gen.router.v1 import router_pb2 as pb
from router_model.service.gen.router.v1 import router_pb2_grpc


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

    async def run(self, seconds: float, phase: Phase, rate: float | None = None, clients: int | None = None) -> None:
        """Load for `seconds`: closed loop, or open loop at `rate` requests/s in total; `clients`
        of the channels (default all)."""
        args = self.args
        n_clients = clients or args.clients
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
                next_at += rng.expovariate((rate or 0.0) / n_clients)
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
        await asyncio.gather(*((open_loop if rate else closed)(k) for k in range(n_clients)))
        phase.seconds += time.perf_counter() - started
        phase.cpu["client"] += time.process_time() - cpu0
        phase.cpu["server"] += proc_cpu_seconds(self.server_pid) - server_cpu0


def in_process(
    router: Router, prompts: list[str], threads: int, seconds: float, phase: Phase, predict: Callable[[str], object] | None = None
) -> None:
    """The router called directly from `threads` threads, as the server's handlers call it."""
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()
    call = predict or router.predict

    def worker(k: int) -> None:
        mine: list[float] = []
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            call(prompts[i % len(prompts)])
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


def in_process_batched(router: Router, prompts: list[str], threads: int, seconds: float, phase: Phase, args: argparse.Namespace) -> None:
    """The router called from `threads` threads through one in-process Batcher (no gRPC)."""
    from router_model.batching import Batcher, BatchingConfig

    batcher = Batcher(BatchingConfig(max_delay_ms=args.batch_max_delay_ms, max_size=args.batch_max_size, runners=args.batch_runners))
    try:
        in_process(router, prompts, threads, seconds, phase, predict=lambda p: batcher.predict(router, p))
    finally:
        batcher.close()
