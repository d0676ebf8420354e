"""The gateway's affinity store (router_model/gateway/affinity.py) holding 100k conversations: its memory.

Fills one `AffinityStore` (the gateway's size cap by default: 100,000 entries, TTL one hour) with
keys of the kinds the gateway stores, in equal shares: tool-loop keys (`conversation_key` of a
conversation prefix, 32 hex characters), session keys (`session:<x-router-session>`, a UUID) and
Responses keys (`response:resp_<24 hex>`), each mapped to one of two model names, as a pair
router's would be. It measures:

- **tracemalloc**: the bytes Python allocated for the filled store and still holds (keys, the
  ordered dict, the (expiry, model) tuples), per entry;
- **RSS**: the process's resident set size before making the keys and after filling a store with
  them, tracemalloc off (Linux /proc/self/status VmRSS): what the operating system sees, allocator
  overhead included;
- the time to fill it (puts per second) and to look every key up once.

Prints the figures and writes benchmarks/results/affinity_memory.json with its conditions (date,
load average before and after, Python version and build, platform, CPU count).

    python benchmarks/affinity_memory.py
    python benchmarks/affinity_memory.py --entries 1000000 --out /tmp/affinity_1m.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from router_model.gateway.affinity import AffinityStore, conversation_key  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "affinity_memory.json"
MODELS = ("gpt-4o-mini", "gpt-4o")


def keys(n: int) -> list[str]:
    """`n` keys, a third of each kind the gateway stores."""
    out: list[str] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            prefix = [{"role": "user", "content": f"Question {i}: what is the weather in Paris?"},
                      {"role": "assistant", "tool_calls": [{"id": f"call_{i}", "type": "function"}]}]
            out.append(conversation_key(prefix))
        elif kind == 1:
            out.append(f"session:{uuid.uuid4()}")
        else:
            out.append(f"response:resp_{uuid.uuid4().hex[:24]}")
    return out


def fill(store: AffinityStore, names: list[str]) -> float:
    started = time.perf_counter()
    for i, key in enumerate(names):
        store.put(key, MODELS[i % 2])
    return time.perf_counter() - started


def rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(n: int) -> dict[str, Any]:
    # RSS: the keys made and the store filled with tracemalloc off; read once the list of keys is gone
    # (the store holds the key strings themselves).
    gc.collect()
    rss_before = rss_bytes()
    names = keys(n)
    store = AffinityStore(ttl=3600, max_entries=n)
    fill_seconds = fill(store, names)
    started = time.perf_counter()
    hits = sum(store.get(k) is not None for k in names)
    get_seconds = time.perf_counter() - started
    assert len(store) == n and hits == n
    del names
    gc.collect()
    rss_after = rss_bytes()
    del store
    gc.collect()

    # tracemalloc: keys made while tracing, so the figure is everything the filled store keeps alive.
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    traced_names = keys(n)
    store = AffinityStore(ttl=3600, max_entries=n)
    fill(store, traced_names)
    del traced_names  # the store's keys remain
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(store) == n
    traced = held - base
    rss = (rss_after - rss_before) if rss_before is not None and rss_after is not None else None
    return {
        "entries": n,
        "tracemalloc_bytes": traced,
        "tracemalloc_bytes_per_entry": round(traced / n, 1),
        "tracemalloc_peak_bytes": peak - base,
        "rss_growth_bytes": rss,
        "rss_growth_bytes_per_entry": round(rss / n, 1) if rss is not None else None,
        "rss_bytes_after": rss_after,
        "puts_per_second": round(n / fill_seconds),
        "gets_per_second": round(n / get_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = [round(x, 2) for x in os.getloadavg()]
    res = measure(args.entries)
    load_after = [round(x, 2) for x in os.getloadavg()]
    mib = 1024 * 1024
    print(f"AffinityStore with {res['entries']:,} entries (a third each: tool-loop, session, response keys)")
    print(f"  tracemalloc: {res['tracemalloc_bytes'] / mib:.1f} MiB held, {res['tracemalloc_bytes_per_entry']:.0f} bytes an entry "
          f"(keys included; peak {res['tracemalloc_peak_bytes'] / mib:.1f} MiB)")
    if res["rss_growth_bytes"] is not None:
        print(f"  RSS growth making the keys and filling it: {res['rss_growth_bytes'] / mib:.1f} MiB, "
              f"{res['rss_growth_bytes_per_entry']:.0f} bytes an entry; process RSS {res['rss_bytes_after'] / mib:.0f} MiB")
    print(f"  {res['puts_per_second']:,} puts/s, {res['gets_per_second']:,} gets/s (one thread)")
    print(f"  load average before / after: {load_before} / {load_after}")
    out = {
        "benchmark": "affinity_memory",
        "results": res,
        "conditions": {
            "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "ttl_seconds": 3600,
            "models": list(MODELS),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
