"""The embedding step of `router-train --ray ADDRESS`: the same exported graph, on Ray Data actors.

Embedding is the cost of training (about 90 prompts/s on two cores). `RayOnnxEmbedder` is an
`OnnxEmbedder` whose uncached texts are embedded by `map_batches` over a Ray Dataset, by actors
that each hold one onnxruntime session of the exported graph (shipped through the object store,
so the workers need no model files). Everything else is the parent's: the cache lookup before,
the cache write after (same keys, same sqlite file), the tokenisation, the order of the output.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.embedding.onnx_embedder import MAX_BATCH, ExportedEmbedder, OnnxEmbedder
from training.heartbeat import Heartbeat

# Texts per Ray batch: big enough that the per-batch overhead (a few ms) is noise beside the graph,
# small enough that a batch is a few seconds of work and the actors stay evenly loaded.
RAY_BATCH = 8 * MAX_BATCH


class EmbedActor:
    """A Ray actor: one session of the exported embedder; a batch of texts in, their vectors out."""

    def __init__(self, files: list[Any], spec: dict, threads: int) -> None:
        import ray

        from router_model.artifact import EmbedderSpec

        graph, tokenizer = ray.get(files[0])
        d = Path(tempfile.mkdtemp(prefix="router-embedder-"))
        (d / "embedder.onnx").write_bytes(graph)
        (d / "tokenizer.json").write_bytes(tokenizer)
        exported = ExportedEmbedder(d / "embedder.onnx", d / "tokenizer.json", EmbedderSpec.from_dict(spec))
        self.embedder = OnnxEmbedder(exported, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vecs = self.embedder.embed_uncached([str(t) for t in batch["text"]])
        return {"i": batch["i"], "embedding": vecs}


class RayOnnxEmbedder(OnnxEmbedder):
    """`OnnxEmbedder` with the uncached texts embedded on Ray (see the module docstring)."""

    def __init__(self, exported: ExportedEmbedder, *, address: str, cache_dir: Path | None = None,
                 threads_per_actor: int = 1, actors: int | None = None) -> None:
        from router_model.score_ray import actor_pool_size, connect_ray

        super().__init__(exported, threads=1, cache_dir=cache_dir)
        self.ray = connect_ray(address)
        self.threads_per_actor = threads_per_actor
        self.actors = actor_pool_size(self.ray, threads_per_actor, actors)
        self._files_ref: Any = None

    def embed_uncached(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embed on the Ray actors; (n, dim) float32 in the input order."""
        ray = self.ray
        dim = self.exported.spec.dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        if self._files_ref is None:
            self._files_ref = ray.put((self.exported.onnx_path.read_bytes(), self.exported.tokenizer_path.read_bytes()))
        import pyarrow as pa

        # Sorted by length, so each Ray batch pads little (the actor sorts within its batch too).
        order = np.argsort(np.array([len(t) for t in texts]), kind="stable")
        table = pa.table({"i": pa.array(order, type=pa.int64()), "text": pa.array([texts[int(j)] for j in order])})
        ray.data.DataContext.get_current().enable_progress_bars = progress
        # Blocks cut here, on the driver: a repartition would be a Ray task competing with the
        # actors for the CPUs (on a cluster with one CPU per actor it would never be scheduled).
        blocks = [table.slice(k, RAY_BATCH) for k in range(0, len(texts), RAY_BATCH)]
        ds = ray.data.from_arrow(blocks).map_batches(
            EmbedActor,
            batch_size=RAY_BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=self.threads_per_actor,
            fn_constructor_kwargs={"files": [self._files_ref], "spec": self.exported.spec.to_dict(),
                                   "threads": self.threads_per_actor},
        )
        seen = 0
        with Heartbeat("embedding (Ray)", total=len(texts), unit="texts", enabled=not progress) as beat:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                idx = np.asarray(batch["i"], dtype=np.int64)
                out[idx] = np.asarray(batch["embedding"], dtype=np.float32)
                seen += len(idx)
                beat.advance(len(idx))
        if seen != len(texts):  # pragma: no cover - Ray Data returns every row once
            raise RuntimeError(f"Ray returned {seen} embeddings for {len(texts)} texts")
        return out

