"""The labels file: one JSON row per line, appended atomically, created mode 0600, keyed by request hash.

Each row is written with one `write(2)` on an `O_APPEND` descriptor, so a killed process leaves
whole rows only. Should a torn tail still be found (a crash inside the write, a full disk), it
is cut off on the next open with a warning, and the request it belonged to is labelled again.
A plain sha256 of the request is fine here: the row holds the request itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from router_model.labelling.errors import LabellingError
from router_model.observe.decision_log import log_text

log = logging.getLogger(__name__)

FILE_MODE = 0o600


def request_messages(request: str | list[Any] | tuple[Any, ...]) -> list[Any]:
    """A request as chat messages (a bare prompt is one user message)."""
    if isinstance(request, str):
        return [{"role": "user", "content": request}]
    return list(request)


def request_hash(request: str | list[Any] | tuple[Any, ...]) -> str:
    """`sha256:<hex>` of the request's messages as compact key-sorted JSON: the resume key."""
    return "sha256:" + hashlib.sha256(log_text(request_messages(request)).encode("utf-8", "surrogatepass")).hexdigest()


def ungraded_path(out: Path) -> Path:
    """Where rows with a missing outcome go (`labels.jsonl` -> `labels.ungraded.jsonl`), so the labels
    file itself always trains as is."""
    out = Path(out)
    return out.with_name(f"{out.stem}.ungraded{out.suffix or '.jsonl'}")


def _repair_tail(fd: int, path: Path) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    # Find the last newline; everything after it is a torn row.
    chunk = 1 << 16
    pos = size
    keep = 0
    while pos > 0:
        start = max(0, pos - chunk)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, pos - start)
        idx = data.rfind(b"\n")
        if idx >= 0:
            keep = start + idx + 1
            break
        pos = start
    os.ftruncate(fd, keep)
    log.warning("%s: cut a torn last row (%d bytes) left by an interrupted write", path, size - keep)


def existing_hashes(path: Path) -> set[str]:
    """Request hashes of the rows already in `path` (none when it does not exist); a torn tail is ignored."""
    hashes: set[str] = set()
    if not Path(path).exists():
        return hashes
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            h = row.get("request_hash") if isinstance(row, dict) else None
            if isinstance(h, str):
                hashes.add(h)
    return hashes


class LabelsWriter:
    """Appends rows to one labels file; thread-safe; the file is 0600 (tightened if it was wider)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = 0
        self._lock = threading.Lock()
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise LabellingError(f"cannot open the labels file {str(self.path)!r}: {exc}") from None
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        if mode & 0o077:
            log.warning("%s: mode %o lets others read labelled prompts; setting it to 600", self.path, mode)
            os.fchmod(self._fd, FILE_MODE)
        _repair_tail(self._fd, self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row as one line with a single write."""
        data = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "surrogatepass")
        with self._lock:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; loop only for the pathological case
                n = os.write(self._fd, view)
                view = view[n:]
            self.rows += 1

    def write_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                try:
                    os.fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = -1

    def __enter__(self) -> LabelsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
