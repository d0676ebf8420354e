"""The classifier's input: the embedding with the request features beside it (as the graph concatenates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from router_model.features import request_features


def feature_matrix(
    embeddings: np.ndarray, texts: Sequence[str], n_tokens: Sequence[int] | np.ndarray, *, features: Sequence[str]
) -> np.ndarray:
    """[embedding | request features] as float32, in the column order the exported graph uses."""
    if len(embeddings) != len(texts) or len(texts) != len(n_tokens):
        raise ValueError(f"length mismatch: {len(embeddings)} embeddings, {len(texts)} texts, {len(n_tokens)} token counts")
    if not features:
        return np.asarray(embeddings, dtype=np.float32)
    # request_features only zips over n_tokens and int()s each entry: an int array does as well
    return np.hstack([embeddings, request_features(texts, cast("Sequence[int]", n_tokens), features)]).astype(np.float32)
