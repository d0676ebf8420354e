"""Batch scoring on Ray Data: the same scorer, many machines, the same output file.

`python -m router_model score --ray ADDRESS` lands here. A file (or each shard of a directory) is
cut on the driver into chunks of `batch_size` lines (byte offsets only: the driver never holds the
data), the chunks become a Ray Dataset, and `map_batches` hands them to actors that each hold one
loaded `Router` (one onnxruntime session). Every actor runs `score.score_chunk`, the very function
the single-process path runs, and the driver writes the results back in input order, so the output
is byte for byte what `score_file` writes (up to onnxruntime's float rounding).

Workers read their chunk of the input themselves, so the input must be on a path every node can
read (a shared filesystem); the model directory is shipped through Ray's object store. Ray is an
optional extra (`pip install 'router-model[ray]'`), imported only inside these functions.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import METADATA_FILE, read_metadata
from router_model.errors import ConfigError
from router_model.score import DEFAULT_BATCH_SIZE, InputLineError, ScoreReport, score_chunk, shard_pairs

LOCAL = "local"  # --ray local: start a Ray on this machine (the other values connect to a cluster)


def import_ray() -> Any:
    """The `ray` module, or a ConfigError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part used
    except ImportError as e:
        raise ConfigError(f"--ray needs Ray Data: pip install 'router-model[ray]' ({e})") from None
    return ray


def connect_ray(address: str) -> Any:
    """Join the Ray at `address` ('auto', 'ray://host:10001', 'host:6379') or start one ('local').

    An already initialised Ray (a test's `ray.init(num_cpus=2)`, a notebook) is used as it is.
    """
    ray = import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address == LOCAL:
            ray.init(**kwargs)
        else:
            ray.init(address=address, **kwargs)
    return ray


def actor_pool_size(ray: Any, cpus_per_actor: int, actors: int | None = None) -> int:
    """As many actors as the cluster has CPUs for (at least one), unless told."""
    if actors is not None:
        if actors < 1:
            raise ConfigError(f"actors must be >= 1, got {actors}")
        return actors
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, cpus_per_actor)))


def read_model_files(model_dir: str | Path) -> dict[str, bytes]:
    """Every file of a model directory (metadata.json and what it lists), to ship to the workers."""
    path = Path(model_dir)
    meta = read_metadata(path)
    return {name: (path / name).read_bytes() for name in (METADATA_FILE, *sorted(meta.files))}


def chunk_offsets(path: Path, batch_size: int) -> list[tuple[int, int, int]]:
    """(byte offset, byte length, first line number) of each chunk of `batch_size` lines."""
    out: list[tuple[int, int, int]] = []
    start, pos, first, n = 0, 0, 1, 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if n == 0:
                start, first = pos, i
            pos += len(raw)
            n += 1
            if n >= batch_size:
                out.append((start, pos - start, first))
                n = 0
    if n:
        out.append((start, pos - start, first))
    return out


class ChunkScorer:
    """A Ray actor that holds one Router and scores chunks of an input file with `score_chunk`."""

    def __init__(self, model_files: list[Any], graph: str | None, threads: int, skip_invalid: bool) -> None:
        import tempfile

        import ray

        from router_model.router import Router

        files: dict[str, bytes] = ray.get(model_files[0])
        self._dir = tempfile.mkdtemp(prefix="router-model-")
        for name, data in files.items():
            (Path(self._dir) / name).write_bytes(data)
        self.router = Router.load(self._dir, graph=graph, threads=threads)
        self.skip_invalid = skip_invalid

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts, reports, errors = [], [], []
        for path, name, prefix, offset, length, first in zip(batch["path"], batch["name"], batch["prefix"],
                                                             batch["offset"], batch["length"], batch["first_line"]):
            with open(str(path), "rb") as f:
                f.seek(int(offset))
                data = f.read(int(length))
            chunk = list(enumerate(io.BytesIO(data), start=int(first)))
            report = ScoreReport()
            try:
                lines = score_chunk(self.router, chunk, report, name=str(name), default_id_prefix=str(prefix),
                                    skip_invalid=self.skip_invalid)
                error = ""
            except InputLineError as e:
                lines, error = [], json.dumps([e.file, e.line, e.field, e.reason])
            report.written = len(lines)
            texts.append("".join(x + "\n" for x in lines))
            reports.append(json.dumps(asdict(report)))
            errors.append(error)
        return {"seq": batch["seq"], "text": np.array(texts, dtype=object), "report": np.array(reports, dtype=object),
                "error": np.array(errors, dtype=object)}


def score_with_ray(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    address: str,
    graph: str | None = None,
    threads: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_invalid: bool = False,
    actors: int | None = None,
    show_progress: bool = True,
) -> ScoreReport:
    """Score a file (or a directory of .jsonl shards into a directory) on Ray; same output as `score_file`.

    Outputs are written beside their targets and renamed into place only when every shard
    succeeded; a bad line (without `skip_invalid`) raises the same InputLineError, for the same
    first bad line, as the single-process path, and leaves no output behind.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if str(input_path) == "-" or str(output_path) == "-":
        raise ConfigError("--ray reads files the workers can open: give file or directory paths, not '-'")
    pairs = shard_pairs(input_path, output_path)
    ray = connect_ray(address)
    items: list[dict[str, Any]] = []
    for k, (src, _) in enumerate(pairs):
        for offset, length, first in chunk_offsets(src, batch_size):
            items.append({"seq": len(items), "shard": k, "path": str(src.resolve()), "name": str(src), "prefix": src.stem,
                          "offset": offset, "length": length, "first_line": first})
    tmps = [dst.with_name(f".{dst.name}.tmp-{os.getpid()}") for _, dst in pairs]
    total = ScoreReport()
    outs = [open(t, "w", encoding="utf-8") for t in tmps]  # noqa: SIM115 - closed in the finally below
    try:
        if items:
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = show_progress
            model_ref = ray.put(read_model_files(model_dir))
            ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1024)).map_batches(
                ChunkScorer,
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actor_pool_size(ray, threads, actors)),
                num_cpus=threads,
                fn_constructor_kwargs={"model_files": [model_ref], "graph": graph, "threads": threads,
                                       "skip_invalid": skip_invalid},
            )
            for seq, row in enumerate(ds.iter_rows()):
                if int(row["seq"]) != seq:  # pragma: no cover - preserve_order is set above
                    raise RuntimeError(f"Ray returned chunk {row['seq']} where chunk {seq} was expected")
                if row["error"]:
                    file, line, field, reason = json.loads(row["error"])
                    raise InputLineError(file, line, field, reason)
                outs[items[seq]["shard"]].write(row["text"])
                total.merge(ScoreReport(**json.loads(row["report"])))
        for f in outs:
            f.close()
        for t, (_, dst) in zip(tmps, pairs):
            t.replace(dst)
        return total
    finally:
        for f in outs:
            f.close()
        for t in tmps:
            t.unlink(missing_ok=True)
