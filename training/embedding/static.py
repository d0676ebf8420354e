"""A static-embedding embedder distilled from the default one with model2vec, as an ONNX graph.

`--embedder model2vec` (or `model2vec:NAME_OR_PATH` for another sentence-transformers model)
distils a vector per vocabulary token from the transformer (model2vec: every token through the
model, PCA, SIF weighting) offline, from the local model. A prompt's embedding is then the mean of
its tokens' vectors, normalised: no attention, no layers, so a decision costs a table lookup.

The graph is plain ONNX (token ids -> Gather of the static vectors -> masked mean -> L2 normalise),
with the same inputs and output name as the exported transformer, so the artifact writer merges
it with the head exactly as it merges MiniLM, and serving stays onnxruntime + tokenizers. The
special tokens the tokenizer adds ([CLS], [SEP]) and the unknown token get weight 0 in the mean,
as in model2vec's own `encode`; the export is checked against `StaticModel.encode`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from router_model.artifact import EmbedderSpec
from router_model.encoder import EncoderSettings
from training.embedding.common import DEFAULT_EMBEDDER, EMBEDDING_OUTPUT, OPSET, PARITY_TEXTS, EmbedderError, resolve_model_path
from training.embedding.onnx_embedder import ExportedEmbedder, OnnxEmbedder

log = logging.getLogger(__name__)

STATIC_PREFIX = "model2vec"
STATIC_FORMAT = "model2vec-onnx-v1"
PCA_DIMS = 256  # model2vec's default; the head's input is 256 + request features
MAX_LENGTH = 512  # a longer window costs almost nothing without attention
STATIC_INPUTS = ("input_ids", "attention_mask")


def is_static(name: str) -> bool:
    """`model2vec` or `model2vec:BASE`: a static embedder distilled from BASE."""
    return name == STATIC_PREFIX or name.startswith(STATIC_PREFIX + ":")


def base_model(name: str) -> str:
    """The sentence-transformers model a static embedder is distilled from."""
    base = name[len(STATIC_PREFIX) + 1 :] if name.startswith(STATIC_PREFIX + ":") else ""
    return base or DEFAULT_EMBEDDER


def _source_digest(path: str) -> str:
    """sha256 of the base model's weight files (the distillation's input), or of its name."""
    h = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")) if Path(path).is_dir() else []
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    if not files:
        h.update(path.encode())
    return h.hexdigest()


def static_graph(table: np.ndarray, keep: np.ndarray, *, normalize: bool, output: str):
    """ONNX: input_ids, attention_mask -> mean of table[ids] over kept, unpadded tokens (-> L2 normalised)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(table.astype(np.float32), "static_vectors"),
        numpy_helper.from_array(keep.astype(np.float32), "static_keep"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["static_vectors", "input_ids"], ["tok_vecs"], axis=0),
        helper.make_node("Gather", ["static_keep", "input_ids"], ["tok_keep"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mask_f", "tok_keep"], ["weight"]),
        helper.make_node("Unsqueeze", ["weight", "axis_2"], ["weight3"]),
        helper.make_node("Mul", ["tok_vecs", "weight3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis_1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["weight", "axis_1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean" if normalize else output]),
    ]
    if normalize:
        nodes += [
            helper.make_node("Mul", ["mean", "mean"], ["sq"]),
            helper.make_node("ReduceSum", ["sq", "axis_1"], ["sq_sum"], keepdims=1),
            helper.make_node("Sqrt", ["sq_sum"], ["norm"]),
            helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
            helper.make_node("Div", ["mean", "norm_safe"], [output]),
        ]
    graph = helper.make_graph(
        nodes,
        "static_embedder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in STATIC_INPUTS],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", table.shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="router-model")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def static_cache_dir(path: str, cache_dir: Path, pca_dims: int, *, model2vec_version: str) -> Path:
    """Where the distillation of the model at `path` is cached: keyed by its weights and the recipe."""
    key = hashlib.sha256(f"{STATIC_FORMAT}:{_source_digest(path)}:{pca_dims}:{model2vec_version}".encode()).hexdigest()[:24]
    return cache_dir / "embedders" / f"static-{key}"


def export_static_embedder(
    name: str,
    cache_dir: Path,
    *,
    truncation: str = "head_tail",
    max_length: int | None = None,
    pca_dims: int = PCA_DIMS,
) -> ExportedEmbedder:
    """Distil (or reuse a cached distillation of) a static embedder and write it as an ONNX graph."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(base_model(name))
    try:
        import model2vec
    except ImportError as e:
        raise EmbedderError(f"--embedder {name} needs model2vec: pip install 'router-model[train]' ({e})") from None
    settings = EncoderSettings(max_length=int(max_length or MAX_LENGTH), truncation=truncation, model_inputs=STATIC_INPUTS)
    out_dir = static_cache_dir(path, cache_dir, pca_dims, model2vec_version=model2vec.__version__)
    onnx_path, tok_path, spec_path = out_dir / "embedder.onnx", out_dir / "tokenizer.json", out_dir / "embedder.json"
    if onnx_path.exists() and tok_path.exists() and spec_path.exists():
        cached = EmbedderSpec.from_dict(json.loads(spec_path.read_text()))
        spec = EmbedderSpec(name, cached.pooling, cached.normalize, cached.dim, settings, cached.weights_sha256)
        return ExportedEmbedder(onnx_path, tok_path, spec)

    try:
        from model2vec.distill import distill
    except ImportError as e:
        raise EmbedderError(f"model2vec distillation needs skeletoken and torch ({e})") from None
    log.warning("distilling a static embedder from %s with model2vec (once; a few minutes on two cores)", path)
    model = distill(path, pca_dims=pca_dims, quantize_to="float32", device="cpu")
    return write_static_embedder(model, name, out_dir, settings=settings)


def write_static_embedder(model, name: str, out_dir: Path, *, settings: EncoderSettings) -> ExportedEmbedder:
    """A distilled `StaticModel` as the ONNX graph + tokenizer + spec in `out_dir`, checked against it."""
    import onnx

    onnx_path, tok_path, spec_path = out_dir / "embedder.onnx", out_dir / "tokenizer.json", out_dir / "embedder.json"
    vectors = np.asarray(model.embedding, dtype=np.float32)
    vocab = model.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = np.arange(vocab)
    table = vectors[model.token_mapping[ids]] if model.token_mapping is not None else vectors
    if model.weights is not None:
        table = table * np.asarray(model.weights, dtype=np.float32)[ids][:, None]
    if table.shape[0] != vocab:
        raise EmbedderError(f"the distilled table has {table.shape[0]} rows for a vocabulary of {vocab}")
    keep = np.ones(vocab, dtype=np.float32)
    for tid, tok in model.tokenizer.get_added_tokens_decoder().items():
        if tok.special:
            keep[tid] = 0.0
    if model.unk_token_id is not None:
        keep[model.unk_token_id] = 0.0
    graph = static_graph(table, keep, normalize=bool(model.normalize), output=EMBEDDING_OUTPUT)
    digest = hashlib.sha256(table.tobytes() + keep.tobytes()).hexdigest()
    spec = EmbedderSpec(name, "mean", bool(model.normalize), int(table.shape[1]), settings, digest)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_onnx, tmp_tok = onnx_path.with_suffix(".tmp"), tok_path.with_suffix(".tmp")
    onnx.save(graph, str(tmp_onnx))
    model.tokenizer.save(str(tmp_tok))
    verify_against_model2vec(ExportedEmbedder(tmp_onnx, tmp_tok, spec), model)
    tmp_onnx.replace(onnx_path)
    tmp_tok.replace(tok_path)
    spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
    return ExportedEmbedder(onnx_path, tok_path, spec)


def verify_against_model2vec(exported: ExportedEmbedder, model, atol: float = 1e-5) -> float:
    """Embed a few texts both ways; refuse a graph that drifts from `StaticModel.encode`."""
    ref = np.asarray(model.encode(list(PARITY_TEXTS)), dtype=np.float32)
    got = OnnxEmbedder(exported, threads=1).embed_uncached(list(PARITY_TEXTS))
    diff = float(np.abs(ref - got).max())
    if diff > atol:
        raise EmbedderError(f"the static ONNX embedder differs from model2vec by {diff:.2e}")
    log.info("static embedder parity with model2vec: max abs diff %.2e", diff)
    return diff
