"""Export a sentence-transformers model to an ONNX graph (token ids -> pooled embedding).

Training embeds through this exported graph with onnxruntime, so the classifier is fit on the
very numbers serving computes. The export is checked against sentence-transformers itself
(`verify_against_sentence_transformers`) and cached by the model's weights, so a retrain does
not export again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from router_model.artifact import EmbedderSpec
from router_model.encoder import EncoderSettings
from training.cache import default_cache_dir
from training.embedding.common import (
    DEFAULT_EMBEDDER,
    EMBEDDING_OUTPUT,
    OPSET,
    PARITY_TEXTS,
    EmbedderError,
    resolve_model_path,
)
from training.embedding.onnx_embedder import ExportedEmbedder, OnnxEmbedder
from training.embedding.static import export_static_embedder, is_static

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

EXPORT_FORMAT = "st-onnx-v1"


def _quiet_transformers() -> None:
    """No weight-loading progress bar in the training output (the export is verified, not watched)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass


def _weights_digest(st_model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(st_model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _pooling_of(st_model) -> tuple[str, bool]:
    from sentence_transformers.models import Normalize, Pooling

    pooling, normalize = "mean", False
    for module in st_model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode
            if isinstance(mode, (tuple, list)):
                if len(mode) != 1:
                    raise EmbedderError(f"combined pooling modes {mode!r} are not supported for ONNX export")
                mode = mode[0]
            mode = str(getattr(mode, "value", mode)).lower()
            if mode not in ("mean", "cls", "max"):
                raise EmbedderError(f"pooling mode {mode!r} is not supported for ONNX export (mean, cls, max are)")
            pooling = mode
        elif isinstance(module, Normalize):
            normalize = True
    return pooling, normalize


def export_embedder(
    name: str = DEFAULT_EMBEDDER,
    cache_dir: Path | None = None,
    *,
    truncation: str = "head_tail",
    max_length: int | None = None,
) -> ExportedEmbedder:
    """Export (or reuse a cached export of) a sentence-transformers model as an ONNX graph.

    `model2vec` / `model2vec:BASE` is the static embedder distilled from BASE (training/embedding/static.py).
    """
    if is_static(name):
        return export_static_embedder(name, cache_dir or default_cache_dir(), truncation=truncation, max_length=max_length)
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(name)
    _quiet_transformers()
    try:
        st = SentenceTransformer(path, device="cpu")
    except Exception as e:
        raise EmbedderError(f"cannot load sentence-transformers model {name!r} (from {path}): {e}") from e
    pooling, normalize = _pooling_of(st)
    transformer = st[0]
    hf_model = cast("PreTrainedModel", transformer.auto_model)  # nn.Module.__getattr__ types it Tensor | Module
    tok = st.tokenizer
    model_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    if "token_type_ids" in tok.model_input_names:
        model_inputs += ("token_type_ids",)
    settings = EncoderSettings(
        max_length=int(max_length or st.max_seq_length or 256), truncation=truncation, model_inputs=model_inputs
    )
    digest = _weights_digest(st)
    dim = st.get_embedding_dimension()
    assert dim is not None, f"{name!r} reports no embedding dimension"
    spec = EmbedderSpec(
        name=name,
        pooling=pooling,
        normalize=normalize,
        dim=int(dim),
        encoder=settings,
        weights_sha256=digest,
    )
    key = hashlib.sha256(f"{EXPORT_FORMAT}:{digest}:{torch.__version__}".encode()).hexdigest()[:24]
    out_dir = (cache_dir or default_cache_dir()) / "embedders" / key
    onnx_path, tok_path = out_dir / "embedder.onnx", out_dir / "tokenizer.json"
    if onnx_path.exists() and tok_path.exists():
        return ExportedEmbedder(onnx_path, tok_path, spec)

    out_dir.mkdir(parents=True, exist_ok=True)
    if not hasattr(tok, "backend_tokenizer"):
        raise EmbedderError(f"{name!r} has no fast tokenizer (tokenizer.json); it cannot be served without transformers")
    tmp_tok = tok_path.with_suffix(".tmp")
    tok.backend_tokenizer.save(str(tmp_tok))

    if hasattr(hf_model, "set_attn_implementation"):
        try:
            hf_model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - older/newer transformers: export as is
            log.debug("could not switch attention to eager; exporting as is")
    hf_model.eval()

    class _Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = hf_model

        def forward(self, *args):
            kwargs = dict(zip(model_inputs, args))
            hidden = self.model(**kwargs).last_hidden_state
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if pooling == "mean":
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif pooling == "cls":
                emb = hidden[:, 0]
            else:
                emb = (hidden + (mask - 1.0) * 1e9).max(1).values
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb

    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in model_inputs)
    tmp_onnx = onnx_path.with_suffix(".tmp")
    # The tracer's known warnings (Python booleans in the mask code, opset-17 index lowering) are
    # about graphs we then verify numerically below; they are noise in the training output.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            _Pooled(),
            dummy,
            str(tmp_onnx),
            input_names=list(model_inputs),
            output_names=[EMBEDDING_OUTPUT],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in model_inputs}, EMBEDDING_OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    exported = ExportedEmbedder(tmp_onnx, tmp_tok, spec)
    verify_against_sentence_transformers(exported, st)
    tmp_onnx.replace(onnx_path)
    tmp_tok.replace(tok_path)
    (out_dir / "embedder.json").write_text(json.dumps(spec.to_dict(), indent=2))
    return ExportedEmbedder(onnx_path, tok_path, spec)


def verify_against_sentence_transformers(exported: ExportedEmbedder, st_model, atol: float = 1e-4) -> float:
    """Embed a few texts both ways; refuse an export that drifts from sentence-transformers."""
    ref = st_model.encode(list(PARITY_TEXTS), convert_to_numpy=True, normalize_embeddings=False)
    got = OnnxEmbedder(exported, threads=1).embed_uncached(list(PARITY_TEXTS))
    diff = float(np.abs(ref - got).max())
    if diff > atol:
        raise EmbedderError(f"ONNX export of {exported.spec.name!r} differs from sentence-transformers by {diff:.2e}")
    log.info("embedder export parity with sentence-transformers: max abs diff %.2e", diff)
    return diff


