"""Adversarial input and failed runs, without a trained model: stale temporaries of dead runs are
removed (and nothing else), and text that is not text is refused with its field by the request
parser and the log reader. With a trained router: tests/integration/test_reliability.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE_LOG

from router_model.errors import InvalidRequestError
from router_model.offline.log import LogFormatError, ReadOptions, read_logs
from router_model.request import parse_request
from training.artifact.writer import remove_stale_temporaries

# ---------------------------------------------------------------- 1-3: failed runs


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "router"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".router.tmp-20260101000000000000-{dead_pid}"
    live = tmp_path / f".router.tmp-20260101000000000000-{os.getpid()}"
    other = tmp_path / f".other.tmp-20260101000000000000-{dead_pid}"
    for d in (stale, live, other):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x" * 100)
    assert remove_stale_temporaries(out) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


# ---------------------------------------------------------------- 4, 7: text that is not text


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        ("\ud800 hello", "prompt", "lone surrogate"),
        ([{"role": "user", "content": "ok \udfff"}], "messages[0].content", "lone surrogate"),
        ([{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}], "messages[0].content[0].text", "lone surrogate"),
        ("\x00\x00\x01\x7f", "prompt", "empty"),
        ("\u200b\u200b \n", "prompt", "empty"),
        ([{"role": "user", "content": "\x00\x00"}], "messages", "no message has any text"),
    ],
)
def test_text_that_is_not_text_is_refused_with_its_field(request_, field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        parse_request(request_)
    assert e.value.field == field and words in e.value.reason


def _lone_surrogate_log(tmp_path: Path) -> Path:
    good = EXAMPLE_LOG.read_text(encoding="utf-8").splitlines()
    bad = '{"prompt": "caf\\ud800", "outcomes": {"gpt-4o-mini": {"passed": true}, "gpt-4o": {"passed": true}}}'
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join([*good[:5], bad, *good[5:]]) + "\n", encoding="utf-8")
    return path


def test_log_reader_reports_a_lone_surrogate_as_a_bad_row(tmp_path: Path) -> None:
    path = _lone_surrogate_log(tmp_path)
    with pytest.raises(LogFormatError) as e:
        read_logs([path])
    (problem,) = e.value.problems
    assert (problem.line_no, problem.field) == (6, "prompt") and "lone surrogate" in problem.reason
    read = read_logs([path], options=ReadOptions(skip_invalid=True))
    assert read.rows_read == read.rows_used + 1 and sum(read.skipped.values()) == 1
