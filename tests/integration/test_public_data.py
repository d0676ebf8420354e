"""training.data.public: pinned checksums, faithful conversion, no partial files, offline fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from router_model.artifact import sha256_file
from router_model.offline.log import read_logs
from training.cache import default_cache_dir, public_data_cache_dir
from training.data import public as pd

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ROUTER_SHARED_DATA") or REPO.parent / "shared" / "data")
RAW = SHARED / "routellm-evals" / "raw" / "mmlu_responses"
NORMALIZED = SHARED / "routellm-evals" / "routellm-mmlu.normalized.jsonl"

needs_shared = pytest.mark.skipif(
    not (RAW.is_dir() and NORMALIZED.is_file()),
    reason=f"public RouteLLM data not found under {SHARED} (set ROUTER_SHARED_DATA to the shared/data folder)",
)


def test_pinned_checksums_table() -> None:
    assert len(pd.MMLU_SUBJECTS) == 57 == len(pd.MMLU_SHA256)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in pd.MMLU_SHA256.values())
    assert pd.ROUTELLM_COMMIT in pd.ROUTELLM_BASE_URL
    assert pd.ROUTELLM_BASE_URL.startswith("https://raw.githubusercontent.com/lm-sys/RouteLLM/")


def test_paths_follow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SHARED_DATA", str(tmp_path / "s"))
    monkeypatch.setenv("ROUTER_CACHE_DIR", str(tmp_path / "c"))
    # One cache root for everything training rebuilds; public data in its own folder under it.
    assert pd.shared_data_dir() == tmp_path / "s" and public_data_cache_dir() == tmp_path / "c" / "public"
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ROUTER_SHARED_DATA")
    monkeypatch.delenv("ROUTER_CACHE_DIR")
    assert pd.shared_data_dir() == REPO.parent / "shared" / "data"
    assert public_data_cache_dir() == Path.home() / ".cache" / "router-model" / "public"
    assert default_cache_dir() == Path.home() / ".cache" / "router-model"


def test_checksum_mismatch_names_file_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "mmlu_abstract_algebra.csv").write_text("prompt,x,y\nnot,the,file\n", encoding="utf-8")
    dest = tmp_path / "cache"
    with pytest.raises(pd.ChecksumError) as ei:
        pd.download_mmlu_csvs(dest, base_url=src.as_uri())
    err = ei.value
    assert "mmlu_abstract_algebra.csv" in err.file
    assert err.expected == pd.MMLU_SHA256["abstract_algebra"] and err.actual != err.expected
    assert err.expected in str(err) and err.actual in str(err)
    assert list(dest.iterdir()) == []  # no partial or unverified file left behind


def test_download_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(pd.PublicDataError, match="could not download .*mmlu_abstract_algebra.csv"):
        pd.download_mmlu_csvs(tmp_path / "cache", base_url=(tmp_path / "nowhere").as_uri())
    assert list((tmp_path / "cache").iterdir()) == []


# A hand-made CSV in the RouteLLM layout; the column names come from the module, not from the data.
HEADER = f"prompt,{pd.WEAK_MODEL},{pd.STRONG_MODEL}\n"


def test_converter_on_a_tiny_csv(tmp_path: Path) -> None:
    subject = "toy_subject"
    csv_path = tmp_path / f"mmlu_{subject}.csv"
    question = "Made-up question: how many legs has a tripod?\nA. 2\nB. 3\nAnswer:"
    csv_path.write_text(HEADER + f'"{question}",False,True\nPlain,True,True\n', encoding="utf-8")
    out = pd.convert_mmlu_csvs([csv_path], tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {
        # the converter's documented format: row i of mmlu_<subject>.csv
        "id": f"routellm-mmlu-{subject}-0", "prompt": question,
        "source": f"routellm/mmlu/{subject}", "label_type": "correctness",
        "models": {pd.WEAK_MODEL: 0.0, pd.STRONG_MODEL: 1.0},
    }
    assert read_logs([out]).strong_model == pd.STRONG_MODEL


def test_converter_rejects_bad_values_without_output(tmp_path: Path) -> None:
    csv_path = tmp_path / "mmlu_toy.csv"
    csv_path.write_text(
        HEADER + "Q,Maybe,True\n", encoding="utf-8"
    )
    with pytest.raises(pd.PublicDataError, match="Maybe"):
        pd.convert_mmlu_csvs([csv_path], tmp_path / "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmlu_toy.csv"]


@needs_shared
def test_pinned_checksums_match_the_shared_raw_copy() -> None:
    for subject, expected in pd.MMLU_SHA256.items():
        assert sha256_file(RAW / f"mmlu_{subject}.csv") == expected, subject


@needs_shared
def test_download_and_convert_reproduces_the_shared_normalized_file(tmp_path: Path) -> None:
    csvs = pd.download_mmlu_csvs(tmp_path / "csv", base_url=RAW.as_uri())
    assert len(csvs) == 57
    out = pd.convert_mmlu_csvs(csvs, tmp_path / "mmlu.jsonl")
    assert sha256_file(out) == pd.MMLU_NORMALIZED_SHA256
    keep = ("id", "prompt", "source", "label_type", "models")
    with out.open(encoding="utf-8") as a, NORMALIZED.open(encoding="utf-8") as b:
        mine = [json.loads(line) for line in a]
        theirs = [json.loads(line) for line in b]
    assert len(mine) == len(theirs) == 14042
    for m, t in zip(mine, theirs):
        assert {k: m[k] for k in keep} == {k: t[k] for k in keep}, m["id"]


@needs_shared
def test_default_public_logs_prefers_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SHARED_DATA", str(SHARED))
    paths = pd.default_public_logs(base_url="file:///nonexistent")
    assert [p.name for p in paths] == [pd.MMLU_NORMALIZED, pd.MTBENCH_NORMALIZED]
    assert all(p.is_file() for p in paths)


@needs_shared
def test_default_public_logs_falls_back_to_verified_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_SHARED_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setenv("ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    (path,) = pd.default_public_logs(base_url=RAW.as_uri())
    assert path == tmp_path / "cache" / "public" / pd.MMLU_NORMALIZED and path.is_file()
    # A second call reuses the verified cache: no download needed.
    assert pd.default_public_logs(base_url="file:///nonexistent") == [path]
    # A tampered cache is rebuilt, not trusted.
    path.write_text("{}\n", encoding="utf-8")
    assert pd.default_public_logs(base_url=RAW.as_uri()) == [path]
    assert sha256_file(path) == pd.MMLU_NORMALIZED_SHA256
