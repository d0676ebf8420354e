"""The fresh-process measurements of benchmarks/latency.py: import time, memory, the torch reference.

Each runs a script in a new interpreter (`run_py`, the repository on PYTHONPATH) that prints one JSON
line: the import time and cold start of `from router_model import Router` (IMPORT_SCRIPT,
`import_time`), the resident memory of an inference-only process routing prompts one at a time and
whether it imported any of FORBIDDEN (MEMORY_SCRIPT), and a sentence-transformers embedding
reference on torch, 1 thread (TORCH_SCRIPT, when `torch_available`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = ("torch", "sklearn", "sentence_transformers", "transformers")


IMPORT_SCRIPT = """
import time
t0 = time.perf_counter()
import router_model
from router_model import Router
t1 = time.perf_counter()
import sys, json
mods = sorted(m for m in ("numpy", "tokenizers", "onnxruntime") if m in sys.modules)
r = Router.load(sys.argv[1])
t2 = time.perf_counter()
r.predict("What is the capital of France?")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "loaded_by_import": mods}))
"""

MEMORY_SCRIPT = """
import json, sys
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024.0
    return out
base = status()
from router_model import Router
after_import = status()
import onnxruntime
r = Router.load(sys.argv[1], graph=sys.argv[2], threads=1)
after_load = status()
prompts = json.load(open(sys.argv[3]))
for p in prompts:
    r.predict(p)
end = status()
print(json.dumps({
    "graph": sys.argv[2], "prompts": len(prompts),
    "rss_start_mb": base["VmRSS"], "rss_after_import_mb": after_import["VmRSS"],
    "rss_after_load_mb": after_load["VmRSS"], "rss_mb": end["VmRSS"], "peak_rss_mb": end["VmHWM"],
    "forbidden_loaded": [m for m in %r if m in sys.modules],
}))
""" % (FORBIDDEN,)  # noqa: UP031 - a script template: its braces are code

TORCH_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
from sentence_transformers import SentenceTransformer
from training.embedding.common import DEFAULT_EMBEDDER, resolve_model_path
t1 = time.perf_counter()
st = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDER), device="cpu")
st.max_seq_length = 256
texts = json.load(open(sys.argv[2]))
n = int(sys.argv[3])
for t in texts[:10]:
    st.encode([t], convert_to_numpy=True)
times = []
with torch.inference_mode():
    for i in range(n):
        t = texts[i % len(texts)]
        a = time.perf_counter()
        st.encode([t], convert_to_numpy=True, show_progress_bar=False)
        times.append(time.perf_counter() - a)
rss = hwm = 0.0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) / 1024
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) / 1024
print(json.dumps({"import_s": t1 - t0, "times_s": times, "rss_mb": rss, "peak_rss_mb": hwm, "torch": torch.__version__}))
"""


def run_py(script: str, *args: str, timeout: int = 600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def import_time(model_dir: Path, n: int = 5) -> dict:
    runs = [run_py(IMPORT_SCRIPT, str(model_dir)) for _ in range(n)]
    return {
        "runs": n,
        "import_s": statistics.median(r["import_s"] for r in runs),
        "import_s_all": [round(r["import_s"], 4) for r in runs],
        "load_s": statistics.median(r["load_s"] for r in runs),
        "first_predict_s": statistics.median(r["first_predict_s"] for r in runs),
        "cold_start_s": statistics.median(r["import_s"] + r["load_s"] + r["first_predict_s"] for r in runs),
        "loaded_by_import": runs[0]["loaded_by_import"],
    }


def torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "sentence_transformers"))
