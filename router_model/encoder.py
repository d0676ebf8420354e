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


def estimate_tokens(text: str) -> int:
    """The documented token estimate where no tokenizer count is at hand: ceil(chars / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


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


@dataclass(frozen=True)
class TokenIds:
    """A truncated sequence's ids with special tokens (what `pad` needs from an Encoding)."""

    ids: list[int]
    type_ids: list[int]

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)


class TextEncoder:
    """Wraps a `tokenizers` tokenizer with explicit truncation and padding."""

    def __init__(self, tokenizer: Tokenizer, settings: EncoderSettings) -> None:
        self.settings = settings
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self._n_special = self._tok.num_special_tokens_to_add(is_pair=False)
        self._special: tuple[list[int], list[int], list[int], list[int], int] | None = None
        self._template()
        self._budget = settings.max_length - self._n_special
        if self._budget <= 0:
            raise ValueError("max_length leaves no room for text after special tokens")

    @classmethod
    def from_file(cls, path: str, settings: EncoderSettings) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), settings)

    def count_tokens(self, text: str) -> int:
        """Token count of the whole text (estimated beyond MAX_TOKENIZED_CHARS)."""
        if len(text) > MAX_TOKENIZED_CHARS:
            return estimate_tokens(text)
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def _clip(self, text: str) -> str:
        if len(text) <= MAX_TOKENIZED_CHARS:
            return text
        half = MAX_TOKENIZED_CHARS // 2
        return text[:half] + "\n" + text[-half:]

    def _template(self) -> tuple[list[int], list[int], list[int], list[int], int]:
        """Where the post-processor puts special tokens around one sequence (probed once)."""
        if self._special is None:
            probe = self._tok.encode("a", add_special_tokens=False)
            full = self._tok.post_process(probe)
            k = len(probe.ids)
            for start in range(len(full.ids) - k + 1):
                if full.ids[start : start + k] == probe.ids and not any(full.special_tokens_mask[start : start + k]):
                    break
            else:  # pragma: no cover - a post-processor that rewrites the sequence itself
                raise ValueError("cannot locate the sequence in the tokenizer's post-processed template")
            self._special = (
                list(full.ids[:start]),
                list(full.type_ids[:start]),
                list(full.ids[start + k :]),
                list(full.type_ids[start + k :]),
                int(full.type_ids[start]) if k else 0,
            )
        return self._special

    def encode_one(self, text: str) -> tuple[Encoding | TokenIds, int]:
        """Token ids with special tokens, truncated per policy; and the untruncated token count.

        A text longer than the budget is cut from the ids of one encoding (head ids + tail ids,
        then the special tokens of the tokenizer's template). `Encoding.truncate` + `merge` is not
        used: merged encodings combine their `overflowing` lists pairwise, which takes gigabytes
        and seconds for a prompt of a few thousand tokens. The count is `count_tokens(text)`
        (estimated beyond MAX_TOKENIZED_CHARS), the same number training computes.
        """
        clipped = self._clip(text)
        enc = self._tok.encode(clipped, add_special_tokens=False)
        n = len(enc.ids) if clipped is text else self.count_tokens(text)
        if len(enc.ids) <= self._budget:
            return self._tok.post_process(enc), n
        s = self.settings
        head = self._budget if s.truncation == "head" else math.ceil(self._budget * s.head_fraction)
        tail = self._budget - head
        ids = enc.ids
        body = ids[:head] + (ids[len(ids) - tail :] if tail > 0 else [])
        pre_ids, pre_types, post_ids, post_types, seq_type = self._template()
        return (
            TokenIds(pre_ids + body + post_ids, pre_types + [seq_type] * len(body) + post_types),
            n,
        )

    def pad(self, encodings: Sequence[Encoding | TokenIds]) -> dict[str, np.ndarray]:
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
