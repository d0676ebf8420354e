"""`router-label split`: an eval log carved out of a labelled log, sharing no prompt with the train file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from router_model.labelling.cli import main as label_main
from router_model.labelling.split_cli import main
from router_model.offline.log import read_logs
from router_model.offline.split import assign_splits, holdout_mask
from router_model.prompt_digest import normalize_prompt


def _row(prompt: str, cheap: bool = True, **extra: object) -> str:
    return json.dumps({"prompt": prompt, "outcomes": {"cheap-m": {"passed": cheap}, "strong-m": {"passed": True}}, **extra})


def _log(tmp_path: Path, n: int = 200, repeats: int = 3) -> Path:
    lines = []
    for i in range(n):
        for r in range(repeats):
            # the same prompt in several spellings (case, whitespace): one group after normalisation
            text = f"Question {i}: what is {i} + {i}?"
            lines.append(_row(text.upper() if r == 1 else f"  {text}\n" if r == 2 else text, cheap=(i + r) % 2 == 0))
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prompts(path: Path) -> set[str]:
    return {normalize_prompt(json.loads(line)["prompt"]) for line in path.read_text(encoding="utf-8").splitlines() if line}


def test_split_shares_no_prompt_and_keeps_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path)
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr), "--eval-share", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "600 rows, 200 distinct prompts" in out and "no prompt in both" in out
    eval_prompts, train_prompts = _prompts(ev), _prompts(tr)
    assert eval_prompts and train_prompts and not eval_prompts & train_prompts
    assert len(eval_prompts) + len(train_prompts) == 200
    assert 30 <= len(eval_prompts) <= 70  # about a quarter of the prompts
    # every row is copied byte for byte, each exactly once
    src = log.read_text(encoding="utf-8").splitlines()
    assert sorted(ev.read_text(encoding="utf-8").splitlines() + tr.read_text(encoding="utf-8").splitlines()) == sorted(src)
    # both files read as labelled logs
    assert read_logs([ev]).rows_used + read_logs([tr]).rows_used == 600
    for path in (ev, tr):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    log = _log(tmp_path, repeats=1)
    runs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        ev, tr = tmp_path / f"{name}-eval.jsonl", tmp_path / f"{name}-train.jsonl"
        assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr), "--seed", seed]) == 0
        runs.append(ev.read_bytes())
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_holdout_is_salted_apart_from_the_training_split() -> None:
    """Training on the train file still gets a test split: the held-out rows are not one end of its hash range."""
    keys = [f"prompt {i}" for i in range(2000)]
    held = holdout_mask(keys, 0.2, seed=0)
    splits = assign_splits([k for k, h in zip(keys, held) if not h], seed=0)
    assert 0.1 < float((splits == "test").mean()) < 0.2
    assert holdout_mask(keys * 2, 0.2, seed=0).tolist() == held.tolist() * 2
    with pytest.raises(ValueError, match="share"):
        holdout_mask(keys, 1.0)


def test_existing_output_is_never_replaced_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, n=50, repeats=1)
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    ev.write_text("frozen\n")
    assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr)]) == 2
    err = capsys.readouterr().err
    assert f"--eval-out {ev}: the file exists" in err and "--force" in err
    assert ev.read_text() == "frozen\n" and not tr.exists()
    ev.chmod(0o644)
    assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr), "--force"]) == 0
    assert ev.read_text() != "frozen\n" and stat.S_IMODE(ev.stat().st_mode) == 0o600


def test_outputs_must_differ_from_each_other_and_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, n=20, repeats=1)
    before = log.read_bytes()
    assert main(["--log", str(log), "--eval-out", str(log), "--train-out", str(tmp_path / "t.jsonl"), "--force"]) == 2
    assert "one of the input logs" in capsys.readouterr().err
    same = str(tmp_path / "x.jsonl")
    assert main(["--log", str(log), "--eval-out", same, "--train-out", same]) == 2
    assert "the same file" in capsys.readouterr().err
    assert log.read_bytes() == before


def test_bad_rows_are_named_by_row_and_field_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "labels.jsonl"
    log.write_text("\n".join([
        _row("fine"),
        json.dumps({"prompt": "no outcomes"}),
        json.dumps({"prompt": "bad score", "outcomes": {"cheap-m": {"score": 7}, "strong-m": {"passed": True}}}),
        "{not json",
        json.dumps({"outcomes": {"cheap-m": {"passed": True}}}),
    ]) + "\n")
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr)]) == 2
    err = capsys.readouterr().err
    assert "4 bad row(s); nothing written" in err
    assert f"{log}:2: outcomes:" in err
    assert f"{log}:3: outcomes.cheap-m.score:" in err
    assert f"{log}:4:" in err and f"{log}:5:" in err
    assert not ev.exists() and not tr.exists()


def test_a_side_left_empty_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "labels.jsonl"
    log.write_text(_row("only one prompt") + "\n" + _row("ONLY  one prompt") + "\n")
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    assert main(["--log", str(log), "--eval-out", str(ev), "--train-out", str(tr)]) == 2
    assert "side would be empty: 2 rows, 1 distinct prompt(s)" in capsys.readouterr().err
    assert not ev.exists() and not tr.exists()


def test_missing_log_and_bad_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ev, tr = str(tmp_path / "e.jsonl"), str(tmp_path / "t.jsonl")
    assert main(["--log", str(tmp_path / "nope.jsonl"), "--eval-out", ev, "--train-out", tr]) == 2
    assert "cannot read the log" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--log", "x", "--eval-out", ev, "--train-out", tr, "--eval-share", "1.5"])
    assert exc.value.code == 2 and "--eval-share" in capsys.readouterr().err


def test_router_label_dispatches_split(tmp_path: Path) -> None:
    log = _log(tmp_path, n=30, repeats=1)
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "labels-train.jsonl"
    assert label_main(["split", "--log", str(log), "--eval-out", str(ev), "--train-out", str(tr)]) == 0
    assert ev.exists() and tr.exists()
