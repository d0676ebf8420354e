"""Decision log: a safe writer for the request path, a strict reader, and the observation report."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from router_model.cost import PriceTable, UnknownModelError
from router_model.observe.decision_log import (
    DecisionLogError,
    DecisionLogWriter,
    decision_record,
    key_id,
    parse_timestamp,
    read_decision_log,
    utc_timestamp,
)
from router_model.observe.report import build_report, format_report
from router_model.observe.report_cli import main

REPO = Path(__file__).resolve().parents[2]
KEY = b"prompt-hash-key-for-tests-0123"
T0 = datetime(2026, 11, 26, 7, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


def rec(i: int = 0, *, model: str = "gpt-4o-mini", p: float | None = 0.9, tokens: int = 100,
        reason: str = "classifier", minutes: float = 0.0, **extra: object) -> dict:
    r = {
        "ts": utc_timestamp(T0 + timedelta(minutes=minutes)),
        "request_id": f"r{i}",
        "prompt_sha256": "0" * 64,
        "prompt_tokens": tokens,
        "model": model,
        "cheap_model": "gpt-4o-mini",
        "strong_model": "gpt-4o",
        "p_cheap_ok": p,
        "confidence": 1.0 if p is None else max(p, 1 - p),
        "reason": reason,
        "threshold": 0.5,
        "artifact_version": "2026-11-01-abc",
    }
    r.update(extra)
    return r


# ---------------------------------------------------------------- writer


def test_timestamps_are_utc_iso_with_z() -> None:
    ts = utc_timestamp(datetime(2026, 11, 26, 8, 30, 0, 123000, tzinfo=timezone(timedelta(hours=1))))
    assert ts == "2026-11-26T07:30:00.123Z"
    assert parse_timestamp(ts) == datetime(2026, 11, 26, 7, 30, 0, 123000, tzinfo=UTC)


def test_many_threads_one_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    n_threads, per_thread = 16, 250
    barrier = threading.Barrier(n_threads)
    with DecisionLogWriter(path, include_prompt=True) as writer:
        def work(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                # long multi-line, non-ASCII prompts make torn or interleaved lines likely if unsafe
                writer.write(rec(t * per_thread + i, prompt=f"thread {t} line {i}\nüñí—\u2028" * 50))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert writer.errors == 0 and writer.written == n_threads * per_thread
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == n_threads * per_thread
    ids = {json.loads(line)["request_id"] for line in lines[:-1]}
    assert len(ids) == n_threads * per_thread
    assert sum(1 for _ in read_decision_log(path)) == n_threads * per_thread


def test_prompt_only_when_asked(tmp_path: Path) -> None:
    decision = {"model": "gpt-4o", "p_cheap_ok": np.float32(0.25), "confidence": 0.75, "threshold": 0.5,
                "reason": "classifier", "artifact_version": "v1", "prompt_tokens": 7}
    record = decision_record(decision, request_id="a", prompt="What is 2+2?",
                             cheap_model="gpt-4o-mini", strong_model="gpt-4o")
    mac = hmac.new(KEY, b"What is 2+2?", hashlib.sha256).hexdigest()
    for include, name in ((False, "off.jsonl"), (True, "on.jsonl")):
        with DecisionLogWriter(tmp_path / name, include_prompt=include, prompt_hash_key=KEY) as w:
            assert w.write(record)
        (line,) = list(read_decision_log(tmp_path / name))
        assert line["prompt_hmac"] == mac and line["p_cheap_ok"] == 0.25 and line["ts"].endswith("Z")
        assert ("prompt" in line) is include
        if include:
            assert line["prompt"] == "What is 2+2?"
    assert "prompt" in record  # the writer drops it from its copy, not the caller's dict


def test_writer_adds_hash_and_ts_when_missing(tmp_path: Path) -> None:
    with DecisionLogWriter(tmp_path / "d.jsonl", prompt_hash_key=KEY) as w:
        r = rec()
        del r["ts"], r["prompt_sha256"]
        w.write({**r, "prompt": "hi"})
    (line,) = list(read_decision_log(tmp_path / "d.jsonl"))
    assert line["prompt_hmac"] == hmac.new(KEY, b"hi", hashlib.sha256).hexdigest() and "prompt" not in line
    assert line["prompt_key_id"] == key_id(KEY) and "prompt_sha256" not in line
    assert abs((parse_timestamp(line["ts"]) - datetime.now(UTC)).total_seconds()) < 60


def test_writer_never_raises_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = DecisionLogWriter(tmp_path / "d.jsonl")
    caplog.set_level(logging.WARNING, logger="router_model.observe.decision_log")
    assert w.write({**rec(), "p_cheap_ok": float("nan")}) is False  # not valid JSON
    w.close()
    w.close()  # idempotent
    assert w.write(rec()) is False and w.write(rec()) is False  # closed file
    assert w.errors == 3 and w.written == 0
    assert len([r for r in caplog.records if "write failed" in r.getMessage()]) == 1


def test_no_prompt_hash_without_a_key(tmp_path: Path) -> None:
    """An unsalted sha256 of a short prompt is reversed by hashing guesses: without a key, no hash."""
    decision = {"model": "gpt-4o", "p_cheap_ok": 0.5, "confidence": 0.5, "threshold": 0.5,
                "reason": "classifier", "artifact_version": "v1", "prompt_tokens": 3}
    # called as the gateway calls it (router_model/gateway/app.py): the signature is unchanged
    record = decision_record(decision, request_id="gw-1", prompt="yes", cheap_model="a", strong_model="b")
    assert "prompt_sha256" not in record
    with DecisionLogWriter(tmp_path / "d.jsonl") as w:
        assert w.write(record)
    (line,) = list(read_decision_log(tmp_path / "d.jsonl"))
    assert not {"prompt_sha256", "prompt_hmac", "prompt_key_id", "prompt"} & set(line)
    assert line["request_id"] == "gw-1"  # request ids are logged as given (docs/service.md)


def test_keyed_hashes_join_within_a_key_only(tmp_path: Path) -> None:
    other = b"another-key-for-the-next-quarter"
    lines = {}
    for name, key in (("a", KEY), ("b", KEY), ("c", other)):
        with DecisionLogWriter(tmp_path / f"{name}.jsonl", prompt_hash_key=key) as w:
            w.write({**rec(), "prompt": "What is 2+2?"})
        (lines[name],) = list(read_decision_log(tmp_path / f"{name}.jsonl"))
    assert lines["a"]["prompt_hmac"] == lines["b"]["prompt_hmac"] != lines["c"]["prompt_hmac"]
    assert lines["a"]["prompt_key_id"] == key_id(KEY) != lines["c"]["prompt_key_id"] == key_id(other)
    assert KEY.hex() not in json.dumps(lines["a"]) and lines["a"]["prompt_hmac"] != hashlib.sha256(b"What is 2+2?").hexdigest()


def test_reader_and_report_accept_records_without_a_hash(tmp_path: Path, prices: PriceTable) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLogWriter(path) as w:
        for i, r in enumerate(hand_made_log()):
            r = dict(r)
            r.pop("prompt_sha256", None)
            if i % 2:
                r["prompt_hmac"] = "ab" * 32
            w.write(r)
    records = list(read_decision_log(path))
    assert len(records) == len(hand_made_log())
    assert build_report(records, prices=prices, requests_per_month=1_000_000).n_records == len(records)


def test_repeated_failures_warn_at_most_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="router_model.observe.decision_log")
    w = DecisionLogWriter(tmp_path / "d.jsonl", warn_interval=0.3)
    w.close()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "write failed" in r.getMessage()]

    for _ in range(5):
        assert w.write(rec()) is False
    assert len(warnings()) == 1
    time.sleep(0.35)
    assert w.write(rec()) is False
    assert len(warnings()) == 2 and "5 record(s) lost since the last warning" in warnings()[1]
    assert w.errors == 6


def test_writer_follows_a_rename_as_logrotate_does(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLogWriter(path) as w:
        assert w.write(rec(1))
        os.rename(path, tmp_path / "d.jsonl.1")  # logrotate's default: rename, then `create`
        path.touch()
        assert w.write(rec(2))
        os.rename(path, tmp_path / "d.jsonl.2")  # renamed, nothing created: the writer creates it
        assert w.write(rec(3))
        os.unlink(path)  # removed
        assert w.write(rec(4))
        assert w.errors == 0 and w.reopened == 3
    assert [r["request_id"] for r in read_decision_log(tmp_path / "d.jsonl.1")] == ["r1"]
    assert [r["request_id"] for r in read_decision_log(tmp_path / "d.jsonl.2")] == ["r2"]
    assert [r["request_id"] for r in read_decision_log(path)] == ["r4"]


def test_reopen_on_request(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    w = DecisionLogWriter(path)
    os.rename(path, tmp_path / "old.jsonl")
    assert w.reopen() and path.exists() and w.reopened == 1
    w.close()
    assert w.reopen() is False  # a closed writer stays closed
    assert w.write(rec()) is False and not (tmp_path / "old.jsonl").read_bytes()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_counted_not_raised() -> None:
    with DecisionLogWriter("/dev/full") as w:
        assert w.write(rec()) is False
        assert w.errors == 1


def test_open_failure_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(DecisionLogError, match="cannot open the decision log"):
        DecisionLogWriter(tmp_path / "dir")


def test_torn_last_line_is_fenced_off(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + '{"ts": "2026-11-26T07:3')  # writer died mid-line
    unfinished: list[DecisionLogError] = []  # or is still writing it: a reader passes over it, no error
    assert [r["request_id"] for r in read_decision_log(path, skipped=unfinished)] == ["r0"]
    assert [e.line for e in unfinished] == [2] and "no newline yet" in str(unfinished[0])
    with DecisionLogWriter(path) as w:
        w.write(rec(1))
    with pytest.raises(DecisionLogError, match=r":2: not valid JSON"):
        list(read_decision_log(path))
    skipped: list[DecisionLogError] = []
    records = list(read_decision_log(path, skip_malformed=True, skipped=skipped))
    assert [r["request_id"] for r in records] == ["r0", "r1"]
    assert [e.line for e in skipped] == [2]


# ---------------------------------------------------------------- reader


def test_malformed_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    bad = {**rec(2)}
    del bad["model"]
    path.write_text("\n".join([json.dumps(rec(0)), "", json.dumps(rec(1)), json.dumps(bad), "[]", "{oops"]) + "\n")
    it = read_decision_log(path)
    assert next(it)["request_id"] == "r0" and next(it)["request_id"] == "r1"  # streams up to the error
    with pytest.raises(DecisionLogError) as err:
        next(it)
    assert err.value.line == 4 and f"{path}:4: missing field 'model'" in str(err.value)
    skipped: list[DecisionLogError] = []
    assert len(list(read_decision_log(path, skip_malformed=True, skipped=skipped))) == 2
    assert [(e.line, e.reason.split(" ")[0]) for e in skipped] == [(4, "missing"), (5, "expected"), (6, "not")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_tokens": "12"}, "'prompt_tokens' should be int"),
        ({"prompt_tokens": -1}, "'prompt_tokens' is negative"),
        ({"p_cheap_ok": 1.5}, "'p_cheap_ok' should be a probability"),
        ({"ts": "yesterday"}, "'ts' is not an ISO-8601"),
    ],
)
def test_bad_field_values(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**rec(), **change}) + "\n")
    with pytest.raises(DecisionLogError, match=message):
        list(read_decision_log(path))


def test_missing_log_file(tmp_path: Path) -> None:
    with pytest.raises(DecisionLogError, match="cannot read the decision log"):
        list(read_decision_log(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------- report


def hand_made_log() -> list[dict]:
    """Five decisions one minute apart: 2 cheap (100, 300 tokens), 3 strong (400, 200, 1200)."""
    return [
        rec(0, model="gpt-4o-mini", p=0.95, tokens=100, minutes=0),
        rec(1, model="gpt-4o", p=0.25, tokens=400, minutes=2),  # out of order, as threads may write
        rec(2, model="gpt-4o-mini", p=0.85, tokens=300, minutes=1),
        rec(3, model="gpt-4o", p=None, tokens=200, reason="vision", minutes=3),
        rec(4, model="gpt-4o", p=0.75, tokens=1200, reason="long-context", minutes=4),
    ]


def test_report_numbers(prices: PriceTable) -> None:
    r = build_report(hand_made_log(), prices=prices, requests_per_month=1_000_000)
    assert (r.n_records, r.cheap_calls, r.cheap_share) == (5, 2, 0.4)
    assert r.first_ts == "2026-11-26T07:30:00.000Z" and r.last_ts == "2026-11-26T07:34:00.000Z"
    assert r.by_reason == {"classifier": 3, "vision": 1, "long-context": 1}
    assert r.by_model == {"gpt-4o": 3, "gpt-4o-mini": 2}
    assert (r.p_count, r.p_null) == (4, 1)
    assert r.p_histogram == (0, 0, 1, 0, 0, 0, 0, 1, 1, 1)
    assert len(r.p_deciles) == 11 and r.p_deciles[0] == 0.25 and r.p_deciles[-1] == 0.95
    assert r.p_deciles[5] == pytest.approx(0.8)  # median of 0.25, 0.75, 0.85, 0.95
    assert r.mean_prompt_tokens == 440 and r.input_tokens_cheap == 200 and r.input_tokens_strong == 600
    # always strong: 440 x $2.50 + 250 x $10 per 1M requests = $1,100 + $2,500
    assert round(r.monthly_cost_strong, 2) == 3600.00
    assert round(r.monthly_cost_cheap, 2) == 216.00  # 440 x 0.15 + 250 x 0.60
    # routed: 400k x (200 x 0.15 + 250 x 0.60) + 600k x (600 x 2.50 + 250 x 10), / 1M
    assert round(r.monthly_cost_routed, 2) == 72.00 + 2400.00
    assert round(r.savings, 2) == 1128.00 and r.savings_fraction == pytest.approx(1128 / 3600)
    assert any("output tokens per request: 250 (assumed" in a for a in r.assumptions)


def test_report_volume_from_log_rate(prices: PriceTable) -> None:
    r = build_report(hand_made_log(), prices=prices)
    assert r.span_seconds == 240 and r.requests_per_month == pytest.approx(43_200)  # 1/minute x 30 days
    assert "extrapolated" in r.volume_source
    assert any("daily/weekly" in a for a in r.assumptions)


def test_report_given_tokens_and_output(prices: PriceTable) -> None:
    r = build_report(hand_made_log(), prices=prices, requests_per_month=1_000_000, input_tokens=500,
                     output_tokens=200)
    assert round(r.monthly_cost_strong, 2) == 3250.00 and round(r.monthly_cost_cheap, 2) == 195.00
    assert round(r.monthly_cost_routed, 2) == round(0.4 * 195 + 0.6 * 3250, 2)


def test_report_unpriced_models_are_refused_unless_priced_as(prices: PriceTable) -> None:
    log = [{**r, "cheap_model": "my-ft", "model": "my-ft" if r["model"] == "gpt-4o-mini" else "gpt-4o"}
           for r in hand_made_log()]
    with pytest.raises(UnknownModelError, match="no price for model 'my-ft'"):
        build_report(log, prices=prices, requests_per_month=1_000_000)
    r = build_report(log, prices=PriceTable.load(price_as={"my-ft": "gpt-4o-mini"}), requests_per_month=1_000_000)
    assert r.cheap_model == "my-ft" and r.cheap_share == 0.4
    assert round(r.monthly_cost_routed, 2) == 2472.00
    assert any("my-ft priced as gpt-4o-mini" in a for a in r.assumptions)
    assert "priced as gpt-4o-mini" in format_report(r)


def test_report_without_volume_and_empty_log(prices: PriceTable) -> None:
    r = build_report([rec()], prices=prices)
    assert r.requests_per_month is None and r.monthly_cost_routed is None
    assert "pass requests_per_month" in format_report(r)
    with pytest.raises(DecisionLogError, match="no records"):
        build_report([], prices=prices)


def test_format_report_text(prices: PriceTable) -> None:
    text = format_report(build_report(hand_made_log(), prices=prices, requests_per_month=1_000_000))
    for part in ("5 decisions", "40.0%", "vision", "long-context", "p50=0.800", "$3,600.00", "$2,472.00",
                 "$1,128.00", "250 (assumed", "[0.9, 1.0]"):
        assert part in text


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "decisions.jsonl"
    with DecisionLogWriter(path) as w:
        for r in hand_made_log():
            w.write(r)
    proc = subprocess.run(
        [sys.executable, "-m", "router_model.cost_cli", "observed", "--log", str(path),
         "--requests-per-month", "1000000", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["monthly_cost_routed"] == pytest.approx(2472.0) and out["cheap_share"] == 0.4
    assert out["p_histogram"] == [0, 0, 1, 0, 0, 0, 0, 1, 1, 1] and out["skipped_lines"] == []

    assert main(["--log", str(path), "--output-tokens", "100"]) == 0
    assert "output tokens per request: 100 (assumed" in capsys.readouterr().out

    with path.open("a") as f:
        f.write("garbage\n")
    with pytest.raises(SystemExit) as exc:
        main(["--log", str(path)])
    assert exc.value.code == 2 and ":6: not valid JSON" in capsys.readouterr().err
    assert main(["--log", str(path), "--skip-malformed"]) == 0
    assert "skipped 1 malformed line" in capsys.readouterr().out
