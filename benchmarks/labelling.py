"""What shadow grading costs the gateway's callers, and how fast `router-label` labels.

Processes on the same machine: the local OpenAI-compatible upstream (tests/gateway_upstream.py,
answering after a fixed delay, default 50 ms, and playing the judge), gateways in observe mode
(`python -m router_model.gateway --config`), one with shadow grading on every routed request
(judge gpt-4o: three extra upstream calls per graded request) and one without, and
this process running the clients. The two gateways are measured in alternating rounds with the
same requests (model `auto`, so every request is decided and graded):

- closed loop: `--clients` concurrent clients back to back (throughput; the shadow work competes
  for the same two cores);
- open loop at a fixed rate (half the shadow-off closed-loop throughput) for the latency a caller
  sees below saturation;
- the gateway process's CPU per request, its shadow work included (Linux /proc).

Shadow grading is compared at `--sample-rates` (default 0.1 and 1).

Then `router-label` runs on `--label-requests` requests (concurrency 8) against the same
upstream: wall time, rows per second, the estimate printed before the run vs the recorded cost.
Absolute times drift on a shared machine: compare the on/off ratios within one run.

    python benchmarks/labelling.py --model-dir artifacts/router
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gateway_overhead as go  # noqa: E402  (the shared upstream launcher and load generator)

RESULTS = REPO / "benchmarks" / "results" / "labelling.json"
BODY = {"model": "auto", "messages": [{"role": "user", "content": go.PROMPT}]}


def _gateway(model_dir: Path, upstream: str, port: int, config: dict[str, Any], tmp: Path, name: str) -> subprocess.Popen:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"upstream": {"base_url": upstream}, "mode": "observe", **config}))
    return subprocess.Popen(
        [sys.executable, "-m", "router_model.gateway", "--model-dir", str(model_dir), "--config", str(path),
         "--port", str(port), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "artifacts" / "router")
    p.add_argument("--delay", type=float, default=0.05, help="upstream answer delay in seconds (default %(default)s)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=300, help="requests per closed-loop round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--label-requests", type=int, default=200)
    p.add_argument("--sample-rates", default="0.1,1", help="shadow sample rates to compare with shadow off (default %(default)s)")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-labelling-"))
    up_port = go._free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    procs = [subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gateway_overhead.py"), "--serve-upstream",
                               str(up_port), "--delay", str(args.delay)], cwd=REPO)]
    rates = [float(r) for r in args.sample_rates.split(",")]
    variants: dict[str, dict[str, Any]] = {"off": {}}
    for r in rates:
        variants[f"shadow_{r:g}"] = {"shadow": {"out": str(tmp / f"labels-{r:g}.jsonl"), "sample_rate": r, "judge": "gpt-4o",
                                                "queue_size": 100_000, "workers": 4}}
    urls: dict[str, str] = {}
    gateways: dict[str, subprocess.Popen] = {}
    try:
        go._wait_ready(f"{upstream}/models", procs[0])
        for name, config in variants.items():
            port = go._free_port()
            gateways[name] = _gateway(args.model_dir, upstream, port, config, tmp, name)
            procs.append(gateways[name])
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            go._wait_ready(f"{url}/readyz", gateways[name])
        closed: dict[str, list[dict[str, Any]]] = {n: [] for n in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                cpu0 = go._cpu_seconds(gateways[name].pid)
                r = asyncio.run(go._run(url + "/v1", BODY, False, args.requests, args.clients))
                if name != "off":  # the shadow work of this round, done before the next one
                    _drain(url)
                cpu1 = go._cpu_seconds(gateways[name].pid)
                if cpu0 is not None and cpu1 is not None:
                    r["gateway_cpu_ms_per_request_incl_shadow"] = round(1000 * (cpu1 - cpu0) / (args.requests + go._warmup_count(args.clients)), 2)
                closed[name].append(r)
        rate = 0.5 * min(r["throughput_rps"] for r in closed["off"])
        n_open = max(100, int(rate * 10))
        opened: dict[str, list[dict[str, Any]]] = {n: [] for n in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                opened[name].append(asyncio.run(go._run(url + "/v1", BODY, False, n_open, args.clients, rate)))
                if name != "off":
                    _drain(url)
        shadow_stats = {name: {"labelled": _metric(url, "router_gateway_shadow_rows_total", result="labelled"),
                               "dropped_queue_full": _metric(url, "router_gateway_shadow_dropped_total", reason="queue_full")}
                        for name, url in urls.items() if name != "off"}
        label = _label_run(upstream, tmp, args.label_requests)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    summary: dict[str, Any] = {}
    for name in urls:
        summary[name] = {
            "closed_throughput_rps": max(r["throughput_rps"] for r in closed[name]),
            "cpu_ms_per_request": min((r.get("gateway_cpu_ms_per_request_incl_shadow") or float("nan")) for r in closed[name]),
            "open_p50_ms": min(r["p50_ms"] for r in opened[name]),
            "open_p99_ms": min(r["p99_ms"] for r in opened[name]),
        }
    base = summary["off"]
    for row in summary.values():
        row["throughput_ratio_vs_off"] = round(row["closed_throughput_rps"] / base["closed_throughput_rps"], 3)
        row["open_p50_ratio_vs_off"] = round(row["open_p50_ms"] / base["open_p50_ms"], 3)
        row["open_p99_ratio_vs_off"] = round(row["open_p99_ms"] / base["open_p99_ms"], 3)
    result = {
        "conditions": {"upstream_delay_s": args.delay, "clients": args.clients, "requests_per_round": args.requests,
                       "rounds": args.rounds, "open_loop_rate_rps": round(rate, 1), "open_loop_requests": n_open,
                       "model_dir": str(args.model_dir), "variants": {k: (v.get("shadow") or {}) | {"out": "<tmp>"} for k, v in variants.items()},
                       "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}},
        "closed_loop": closed,
        "open_loop": opened,
        "summary": summary,
        "shadow": shadow_stats,
        "router_label": label,
    }
    print(f"gateway, observe mode, upstream delay {args.delay * 1000:.0f} ms, {args.clients} clients; open loop at {rate:.1f} rps:")
    print(f"  {'variant':<14}{'closed rps':>11}{'ratio':>7}{'cpu ms/req':>11}{'open p50':>10}{'open p99':>10}")
    for name, row in summary.items():
        print(f"  {name:<14}{row['closed_throughput_rps']:>11.1f}{row['throughput_ratio_vs_off']:>7.2f}"
              f"{row['cpu_ms_per_request']:>11.2f}{row['open_p50_ms']:>10.1f}{row['open_p99_ms']:>10.1f}")
    print(f"  shadow rows: {shadow_stats}")
    print(f"router-label: {label['rows']} rows in {label['wall_s']:.1f} s ({label['rows_per_s']:.1f}/s, concurrency 8); "
          f"estimate ${label['estimate_usd']:.4f}, recorded ${label['recorded_usd']:.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


def _drain(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _metric(url, "router_gateway_shadow_rows_total", result="labelled") + \
            _metric(url, "router_gateway_shadow_rows_total", result="ungraded")
        if done >= _metric(url, "router_gateway_shadow_sampled_total"):
            return
        time.sleep(0.2)


def _label_run(upstream: str, tmp: Path, n: int) -> dict[str, Any]:
    requests = tmp / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"{go.PROMPT} (#{i})"}) + "\n" for i in range(n)))
    out = tmp / "labels.jsonl"
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "router_model.labelling", "--requests", str(requests), "--upstream", upstream,
                          "--models", "gpt-4o-mini,gpt-4o", "--judge", "gpt-4o", "--out", str(out), "--concurrency", "8",
                          "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    estimate = float(run.stderr.split("estimated cost $")[1].split()[0])
    return {"requests": n, "rows": len(rows), "wall_s": round(wall, 2), "rows_per_s": round(len(rows) / wall, 1),
            "estimate_usd": estimate, "recorded_usd": round(sum(r["labelling_cost_usd"] for r in rows), 6),
            "note": "wall time includes interpreter start-up; the fake upstream's answers are 30 tokens, the estimate assumes 250"}


if __name__ == "__main__":
    sys.exit(main())
