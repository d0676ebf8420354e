"""Tokenisation shared by training and serving, so both feed the graph identical token ids.

Truncation policy (`head_tail`, the default): a text longer than the embedder's window keeps its
first `head_fraction` of the budget and its last tokens. The head of a request usually states
the task, the tail often holds the actual question after a long pasted context; plain `head`
truncation (what sentence-transformers does) drops the tail. `benchmarks/truncation.py`
measures one against the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

TRUNCATION_POLICIES = ("head_tail", "head")
# Beyond this many characters only the ends are tokenised for the classifier and the token count
# is estimated (chars / 4): a multi-megabyte prompt must not stall the request path.
MAX_TOKENIZED_CHARS = 200_000
CHARS_PER_TOKEN_ESTIMATE = 4


@dataclass(frozen=True)
class EncoderSettings:
    """How text becomes token ids; written into the artifact so serving matches training."""

    max_length: int = 256
    truncation: str = "head_tail"
    head_fraction: float = 0.5
    model_inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {self.truncation!r}")
        if not 0.0 < self.head_fraction <= 1.0:
            raise ValueError(f"head_fraction must be in (0, 1], got {self.head_fraction}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")


class TextEncoder:
    """Wraps a `tokenizers` tokenizer with explicit truncation and padding."""

    def __init__(self, tokenizer: Tokenizer, settings: EncoderSettings) -> None:
        self.settings = settings
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self._n_special = self._tok.num_special_tokens_to_add(is_pair=False)
        self._budget = settings.max_length - self._n_special
        if self._budget <= 0:
            raise ValueError("max_length leaves no room for text after special tokens")

    @classmethod
    def from_file(cls, path: str, settings: EncoderSettings) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), settings)

    def count_tokens(self, text: str) -> int:
        """Token count of the whole text (estimated beyond MAX_TOKENIZED_CHARS)."""
        if len(text) > MAX_TOKENIZED_CHARS:
            return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def _clip(self, text: str) -> str:
        if len(text) <= MAX_TOKENIZED_CHARS:
            return text
        half = MAX_TOKENIZED_CHARS // 2
        return text[:half] + "\n" + text[-half:]

    def encode_one(self, text: str) -> tuple[Encoding, int]:
        """Token ids with special tokens, truncated per policy; and the untruncated text length."""
        text = self._clip(text)
        enc = self._tok.encode(text, add_special_tokens=False)
        n = len(enc.ids)
        if n > self._budget:
            s = self.settings
            head = self._budget if s.truncation == "head" else math.ceil(self._budget * s.head_fraction)
            tail = self._budget - head
            enc.truncate(head, direction="right")
            if tail > 0:
                tail_enc = self._tok.encode(text, add_special_tokens=False)
                tail_enc.truncate(tail, direction="left")
                enc = Encoding.merge([enc, tail_enc], growing_offsets=False)
        return self._tok.post_process(enc), n

    def pad(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """Pad encodings to the batch's longest into the graph's int64 inputs."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.settings.model_inputs}

    def encode_batch(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded model inputs for a batch, and each text's untruncated token count."""
        encs = [self.encode_one(t) for t in texts]
        return self.pad([e for e, _ in encs]), np.array([n for _, n in encs], dtype=np.int64)
