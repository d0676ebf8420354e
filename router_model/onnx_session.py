"""One place that builds onnxruntime sessions, so threads and providers are set deliberately."""

from __future__ import annotations

import onnxruntime as ort


def make_session(model: str | bytes, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with explicit intra-op threads and one inter-op thread.

    Explicit thread counts matter on small machines: onnxruntime's default spins a thread per
    core, which fights the gRPC worker threads for the same cores.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
