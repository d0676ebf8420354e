"""Which prompts a router was trained on, kept compactly in its metadata.

The split groups rows by `normalize_prompt`, and the artifact records a Bloom filter of the
normalised training and validation prompts. A report scored on some log can then say how many
of its rows the router has seen (an evaluation on those overstates it), without storing a single
prompt: membership only, with a stated false-positive rate.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_WS = re.compile(r"\s+")
DEFAULT_FALSE_POSITIVE_RATE = 1e-4


def normalize_prompt(text: str) -> str:
    """Group key: NFKC, lowercase, whitespace collapsed, stripped (so trivial variants group together)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


@dataclass(frozen=True)
class PromptDigest:
    """A Bloom filter over normalised prompts: `seen` may say yes wrongly (at about `fp_rate`), never no wrongly."""

    bits: bytes
    n_bits: int
    n_hashes: int
    n_items: int

    @classmethod
    def build(cls, prompts: Iterable[str], *, fp_rate: float = DEFAULT_FALSE_POSITIVE_RATE) -> PromptDigest:
        keys = sorted({normalize_prompt(p) for p in prompts})
        n = max(1, len(keys))
        n_bits = max(64, math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2))
        n_hashes = max(1, round(n_bits / n * math.log(2)))
        bits = bytearray((n_bits + 7) // 8)
        for key in keys:
            for i in _positions(key, n_bits, n_hashes):
                bits[i >> 3] |= 1 << (i & 7)
        return cls(bytes(bits), n_bits, n_hashes, len(keys))

    def seen(self, prompt: str) -> bool:
        key = normalize_prompt(prompt)
        return all(self.bits[i >> 3] & (1 << (i & 7)) for i in _positions(key, self.n_bits, self.n_hashes))

    @property
    def fp_rate(self) -> float:
        """The expected false-positive rate at this fill."""
        return (1.0 - math.exp(-self.n_hashes * self.n_items / self.n_bits)) ** self.n_hashes

    def to_dict(self) -> dict[str, Any]:
        return {"bloom_b64": base64.b64encode(self.bits).decode("ascii"), "n_bits": self.n_bits,
                "n_hashes": self.n_hashes, "n_items": self.n_items, "normalization": "nfkc-lower-ws"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PromptDigest:
        bits = base64.b64decode(str(d["bloom_b64"]), validate=True)
        n_bits, n_hashes = int(d["n_bits"]), int(d["n_hashes"])
        if n_bits <= 0 or n_hashes <= 0 or len(bits) != (n_bits + 7) // 8:
            raise ValueError(f"inconsistent prompt digest: {len(bits)} bytes for {n_bits} bits")
        return cls(bits, n_bits, n_hashes, int(d["n_items"]))


def _positions(key: str, n_bits: int, n_hashes: int) -> list[int]:
    """k bit positions by double hashing of sha256(key)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    h1 = int.from_bytes(digest[:8], "big")
    h2 = int.from_bytes(digest[8:16], "big") | 1
    return [(h1 + i * h2) % n_bits for i in range(n_hashes)]
