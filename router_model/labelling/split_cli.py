"""`router-label split`: carve a frozen evaluation log out of a labelled log, sharing no prompt with the rest.

Rows are grouped by their normalised prompt text (`router_model.prompt_digest.normalize_prompt` of
the text the classifier sees: the key `router-train` splits by and records in each model's Bloom
filter of training prompts), and a whole group goes to the eval file or to the train file by a
hash of its key and `--seed`. So no prompt is in both files, the same log and seed always give the
same two files, and a log that grows keeps every old row on the same side. Rows are copied byte
for byte (either labelled-log format, data/README.md).

Both outputs hold prompts: they are created mode 0600, and an existing file is never replaced
without `--force`. Every row is validated first; bad rows are listed as `file:line: field: reason`
and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router_model.cli_args import open_share, setup_logging
from router_model.errors import RouterError
from router_model.offline.row import RowError, parse_line
from router_model.offline.split import holdout_mask
from router_model.prompt_digest import normalize_prompt

PROG = "router-label split"
FILE_MODE = 0o600
MAX_LISTED = 10

EPILOG = """
Example:
  router-label split --log labels.jsonl --eval-out eval.jsonl --train-out labels-train.jsonl --eval-share 0.2
  router-train --log labels-train.jsonl --cheap gpt-4o-mini --strong gpt-4o --out models/router
  router-promote --candidate latest --eval-log eval.jsonl

Freeze the eval file: router-promote records its sha256 at the first promotion and refuses another
file later. Train every later router on logs that exclude its rows (the train file, plus new labels).

Exit status: 0 written, 2 bad input or options (nothing written).
"""


class SplitError(RouterError):
    """The log cannot be split as asked (bad rows, an output that exists, a side left empty)."""


@dataclass(frozen=True)
class SplitResult:
    rows: int
    prompts: int
    eval_rows: int
    eval_prompts: int
    train_rows: int
    train_prompts: int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Split a labelled log into an evaluation log and a training log with no prompt in both "
        "(grouped by normalised prompt text); both files are created mode 0600.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log", action="append", required=True, type=Path, metavar="FILE",
                   help="labelled log (JSONL, data/README.md); repeat for several files")
    p.add_argument("--eval-out", required=True, type=Path, metavar="FILE", help="the evaluation log to write")
    p.add_argument("--train-out", required=True, type=Path, metavar="FILE", help="the rest, to train on")
    p.add_argument("--eval-share", type=open_share, default=0.2, metavar="S",
                   help="share of the distinct prompts that go to the eval log (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace output files that exist")
    return p


def _read(paths: Sequence[Path]) -> tuple[list[bytes], list[str]]:
    """Every row (its bytes, newline-terminated) and its group key; a SplitError listing the bad rows."""
    rows: list[bytes] = []
    keys: list[str] = []
    problems: list[str] = []
    for path in paths:
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise SplitError(f"cannot read the log {str(path)!r}: {exc.strerror or exc}") from None
        with fh:
            for line_no, raw in enumerate(fh, start=1):
                try:
                    parsed = parse_line(raw, line_no=line_no, default_id=f"{path.name}:{line_no}", pass_threshold=0.8)
                except RowError as exc:
                    where = f"{path}:{line_no}"
                    problems.append(f"{where}: {exc.field}: {exc.reason}" if exc.field else f"{where}: {exc.reason}")
                    continue
                if parsed is None:
                    continue
                rows.append(raw if raw.endswith(b"\n") else raw + b"\n")
                keys.append(normalize_prompt(parsed.classifier_text))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise SplitError(f"{len(problems)} bad row(s); nothing written:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    if not rows:
        raise SplitError(f"no rows in {', '.join(map(str, paths))}")
    return rows, keys


def _check_outputs(logs: Sequence[Path], outs: Sequence[tuple[str, Path]], force: bool) -> None:
    resolved = {p.resolve() for p in logs}
    eval_out, train_out = (p.resolve() for _, p in outs)
    if eval_out == train_out:
        raise SplitError(f"--eval-out and --train-out are the same file ({outs[0][1]})")
    for flag, path in outs:
        if path.resolve() in resolved:
            raise SplitError(f"{flag} {path}: it is one of the input logs")
        if path.is_dir():
            raise SplitError(f"{flag} {path}: is a directory")
        if (path.exists() or path.is_symlink()) and not force:
            raise SplitError(f"{flag} {path}: the file exists; choose another name or pass --force to replace it")
        if not path.parent.is_dir():
            raise SplitError(f"{flag} {path}: the directory {str(path.parent)!r} does not exist")


def _write(path: Path, rows: Sequence[bytes], *, force: bool) -> None:
    """Write to a 0600 temporary file beside `path`, then move it into place (never over a file without force)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            for row in rows:
                fh.write(row)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the file appeared meanwhile: never overwritten
            except FileExistsError:
                raise SplitError(f"{path}: the file exists; choose another name or pass --force to replace it") from None
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def split_log(logs: Sequence[Path], eval_out: Path, train_out: Path, *, eval_share: float = 0.2, seed: int = 0,
              force: bool = False) -> SplitResult:
    """Write the eval and train files; see the module docstring."""
    _check_outputs(logs, (("--eval-out", eval_out), ("--train-out", train_out)), force)
    rows, keys = _read(logs)
    held = holdout_mask(keys, eval_share, seed=seed)
    eval_keys = {k for k, h in zip(keys, held) if h}
    train_keys = set(keys) - eval_keys
    assert not eval_keys & train_keys
    n_prompts = len(eval_keys) + len(train_keys)
    if not eval_keys or not train_keys:
        side = "eval" if not eval_keys else "train"
        raise SplitError(f"the {side} side would be empty: {len(rows)} rows, {n_prompts} distinct prompt(s) at "
                         f"--eval-share {eval_share} (seed {seed}); label more requests or change --eval-share")
    _write(eval_out, [r for r, h in zip(rows, held) if h], force=force)
    _write(train_out, [r for r, h in zip(rows, held) if not h], force=force)
    n_eval = int(held.sum())
    return SplitResult(len(rows), n_prompts, n_eval, len(eval_keys), len(rows) - n_eval, len(train_keys))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        res = split_log(args.log, args.eval_out, args.train_out, eval_share=args.eval_share, seed=args.seed, force=args.force)
    except RouterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: {res.rows:,} rows, {res.prompts:,} distinct prompts -> {args.eval_out}: {res.eval_rows:,} rows "
          f"({res.eval_prompts:,} prompts), {args.train_out}: {res.train_rows:,} rows ({res.train_prompts:,} prompts); "
          f"no prompt in both (mode 0600, seed {args.seed})")
    print(f"next: router-train --log {args.train_out} ...; router-promote --candidate latest --eval-log {args.eval_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
