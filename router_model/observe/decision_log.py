"""Observation-mode decision log: what the router *would* have done, one JSON object per line.

Before the router is trusted to switch models, the service runs it in observation mode and
appends each decision here; `router_model.observe.report` then answers the questions a rollout
needs. This module owns the line format: building a record, writing it safely from the request
path, and reading it back strictly.

Line format (UTC ISO-8601 timestamps; `prompt_hmac` and `prompt_key_id` only when the writer
has a prompt-hash key; `prompt` only when prompt logging was asked for):
  {"ts": "2026-11-26T07:30:00.123Z", "request_id": "...", "prompt_tokens": 412,
   "model": "gpt-4o-mini", "cheap_model": "gpt-4o-mini", "strong_model": "gpt-4o",
   "p_cheap_ok": 0.91, "confidence": 0.91, "reason": "classifier", "threshold": 0.5,
   "artifact_version": "...", "prompt_hmac": "<hex>", "prompt_key_id": "<hex>", "prompt": "...",
   "centroid_distance": 0.61}
`centroid_distance` (optional, for `router-drift`): the prompt's embedding distance to the nearest
training centroid, when the artifact has a drift reference and the classifier decided.
`answer_score` (optional, the gateway's): the cheap answer's score (router_model/answer_score.py,
P(it fails where the strong one passes), rounded to 4 places), when the answer was scored.

No unsalted hash of the prompt is ever written: a plain sha256 of a short or guessable prompt
can be reversed by hashing candidates. HMAC-SHA256 with a per-deployment secret still joins
records of the same prompt (within one key) without that risk. Logs written before this change
may carry `prompt_sha256`; readers accept records with or without either hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router_model.errors import RouterError
from router_model.request import Request

log = logging.getLogger(__name__)

# A new decision log (and one recreated after a rotation) is readable by its owner only: it holds
# request ids, and prompts with --log-prompts. An existing file keeps its mode (logrotate's `create`).
FILE_MODE = 0o600

# While writes keep failing, say so at most this often (seconds), with the count lost meanwhile.
WARN_INTERVAL_SECONDS = 60.0

REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "ts": (str,),
    "prompt_tokens": (int,),
    "model": (str,),
    "cheap_model": (str,),
    "strong_model": (str,),
    "reason": (str,),
}


class DecisionLogError(RouterError, ValueError):
    """A decision log is unreadable or a line is malformed: `path` and `line` (1-based) say where."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}" if path and line else (path or (f"line {line}" if line else ""))
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line
        self.reason = message


def utc_timestamp(when: datetime | None = None) -> str:
    """`when` (default now) as UTC ISO-8601 with milliseconds and a Z, the log's `ts` format."""
    when = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(ts: str) -> datetime:
    """Parse a log `ts` (Z or offset; naive means UTC) into an aware datetime."""
    text = ts.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def prompt_sha256(prompt: str) -> str:
    """Hex SHA-256 of the prompt's UTF-8 bytes (kept for callers; the log itself writes `prompt_hmac`)."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def prompt_hmac(prompt: str, key: bytes) -> str:
    """Hex HMAC-SHA256 of the prompt's UTF-8 under `key`: joins records of one prompt, and
    unlike a plain hash cannot be matched against guessed prompts without the key."""
    return hmac.new(key, prompt.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for a prompt-hash key, so a reader can tell which records are comparable
    after a key rotation (derived through HMAC, so it says nothing about the key)."""
    return hmac.new(key, b"router-model prompt-hash key id", hashlib.sha256).hexdigest()[:12]


def log_text(request: Request) -> str:
    """The text a record hashes (and, if asked, stores) for a request: the prompt itself, or the
    messages as compact key-sorted JSON, so every writer hashes the same request alike."""
    if isinstance(request, str):
        return request
    return json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def decision_record(
    decision: Any,
    *,
    request_id: str,
    prompt: str,
    cheap_model: str,
    strong_model: str,
    ts: str | None = None,
) -> dict[str, Any]:
    """One log record from a RoutingDecision (or its dict) and the request it was made for.

    The record carries the prompt; DecisionLogWriter replaces it by its keyed hash (when it has
    a key) and drops it unless prompt logging is on, so the caller never has to decide twice.
    """
    fields = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
    # Optional: the embedding distance to the nearest training centroid (drift); absent for rules and old artifacts.
    extra = {"centroid_distance": fields["centroid_distance"]} if fields.get("centroid_distance") is not None else {}
    return {
        "ts": ts or utc_timestamp(),
        "request_id": request_id,
        "prompt_tokens": fields["prompt_tokens"],
        "model": fields["model"],
        "cheap_model": cheap_model,
        "strong_model": strong_model,
        "p_cheap_ok": fields["p_cheap_ok"],
        "confidence": fields["confidence"],
        "reason": fields["reason"],
        "threshold": fields["threshold"],
        "artifact_version": fields["artifact_version"],
        "prompt": prompt,
        **extra,
    }


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars (a float32 probability, an int64 count)
        return value.item()
    return str(value)


class DecisionLogWriter:
    """Thread-safe JSON-lines appender that never raises into the request path.

    Each record is serialised outside the lock and appended with a single unbuffered write
    under it, so a line reaches the file as soon as `write` returns (what line buffering is
    for) and concurrent writers never interleave. A failed write (full disk, closed file,
    unserialisable value) is counted in `errors` and logged at most once per `warn_interval`
    seconds while failures go on; the request goes on. A partially written line is fenced off
    by a newline before the next record, so one bad line never corrupts the next.

    The file is created with mode 0600 (owner only); an existing file keeps its mode.

    Rotation: before each write the path is compared with the open file (device and inode); when
    logrotate (or anyone) renamed or removed it, the writer reopens the path, creating it (0600) if
    needed. `reopen()` does the same on demand (router-serve calls it on SIGHUP).

    `prompt_hash_key`: with a key, records get `prompt_hmac` (HMAC-SHA256 of the prompt) and
    `prompt_key_id`; without one no prompt hash is written at all.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        include_prompt: bool = False,
        prompt_hash_key: bytes | None = None,
        warn_interval: float = WARN_INTERVAL_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.include_prompt = include_prompt
        self.errors = 0
        self.written = 0
        self.reopened = 0
        self._key = prompt_hash_key or None
        self._key_id = key_id(prompt_hash_key) if prompt_hash_key else None
        self._warn_interval = warn_interval
        self._lock = threading.Lock()
        self._last_warned: float | None = None
        self._lost_since_warning = 0
        self._fence = False
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: Any = self._open()
        except OSError as exc:  # at start-up, not in the request path: fail loudly
            raise DecisionLogError(f"cannot open the decision log for appending: {exc}", path=str(path)) from None

    def _open(self) -> Any:
        """Open the path for appending (created 0600) and note whether its last line is unfinished."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            f = os.fdopen(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if self.include_prompt and mode & 0o077:
            log.warning("decision log %s: mode %o lets others read the logged prompts (a new log is created 600)",
                        self.path, mode)
        self._identity = self._id(os.fstat(f.fileno()))
        # A previous run may have died mid-line; start on a fresh line so ours stay readable.
        try:
            if f.tell() > 0:
                with open(self.path, "rb") as g:
                    g.seek(-1, os.SEEK_END)
                    self._fence = g.read(1) != b"\n"
        except OSError:
            self._fence = True
        return f

    @staticmethod
    def _id(st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        """True when the path no longer names the open file (renamed, removed or replaced)."""
        try:
            return self._id(os.stat(self.path)) != self._identity
        except OSError:
            return True

    def _reopen_locked(self) -> None:
        new = self._open()  # raises OSError: the caller counts it
        old, self._file = self._file, new
        self.reopened += 1
        with contextlib.suppress(OSError):
            old.close()

    def reopen(self) -> bool:
        """Close and reopen the path (after a rotation); False (counted, logged) when it fails."""
        with self._lock:
            if self._closed:
                return False
            try:
                self._reopen_locked()
                return True
            except OSError as exc:
                self._failed(exc)
                return False

    def write(self, decision: Mapping[str, Any]) -> bool:
        """Append one record; True when it was written. Adds `ts` if absent, and the keyed
        prompt hash when the record carries a prompt and the writer has a key."""
        try:
            record = dict(decision)
            record.setdefault("ts", utc_timestamp())
            prompt = record.get("prompt")
            if isinstance(prompt, str) and self._key is not None:
                record.setdefault("prompt_hmac", prompt_hmac(prompt, self._key))
                record.setdefault("prompt_key_id", self._key_id)
            if not self.include_prompt:
                record.pop("prompt", None)
            line = (json.dumps(record, default=_json_default, allow_nan=False) + "\n").encode("utf-8")
        except Exception as exc:  # noqa: BLE001 - a log must not fail a request
            with self._lock:
                self._failed(exc)
            return False
        with self._lock:
            try:
                if not self._closed and self._rotated():
                    self._reopen_locked()
                if self._fence:
                    line = b"\n" + line
                    self._fence = False
                view = memoryview(line)
                while view:
                    n = self._file.write(view)
                    if not n:
                        raise OSError("no bytes written")
                    view = view[n:]
                self.written += 1
                self._recovered()
                return True
            except Exception as exc:  # noqa: BLE001 - full disk, closed file, ...
                self._fence = True
                self._failed(exc)
                return False

    def _failed(self, exc: BaseException) -> None:
        """Count a failure (caller holds the lock); log it at most once per warn interval."""
        self.errors += 1
        self._lost_since_warning += 1
        now = time.monotonic()
        if self._last_warned is None or now - self._last_warned >= self._warn_interval:
            log.warning(
                "decision log %s: write failed (%s); %d record(s) lost since the last warning; "
                "repeated at most every %.0f s while failing",
                self.path, exc, self._lost_since_warning, self._warn_interval,
            )
            self._last_warned = now
            self._lost_since_warning = 0

    def _recovered(self) -> None:
        if self._last_warned is not None:
            log.warning("decision log %s: writing again (%d failed write(s) in all)", self.path, self.errors)
            self._last_warned = None
            self._lost_since_warning = 0

    def close(self) -> None:
        """Close the file; later writes are counted as errors. Safe to call twice."""
        with self._lock:
            self._closed = True
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)

    @property
    def closed(self) -> bool:
        return bool(self._file.closed)

    def __enter__(self) -> DecisionLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def record_problem(record: Any) -> str | None:
    """Why `record` is not a usable decision record, or None when it is."""
    if not isinstance(record, Mapping):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, types in REQUIRED_FIELDS.items():
        if key not in record:
            return f"missing field {key!r}"
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"field {key!r} should be {types[0].__name__}, got {value!r}"
    if record["prompt_tokens"] < 0:
        return f"field 'prompt_tokens' is negative: {record['prompt_tokens']}"
    p = record.get("p_cheap_ok")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
        return f"field 'p_cheap_ok' should be a probability or null, got {p!r}"
    dist = record.get("centroid_distance")
    if dist is not None and (isinstance(dist, bool) or not isinstance(dist, (int, float)) or not 0.0 <= dist < 1e6):
        return f"field 'centroid_distance' should be a non-negative number or null, got {dist!r}"
    score = record.get("answer_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0):
        return f"field 'answer_score' should be a probability or null, got {score!r}"
    try:
        parse_timestamp(record["ts"])
    except ValueError:
        return f"field 'ts' is not an ISO-8601 timestamp: {record['ts']!r}"
    return None


def read_decision_log(
    path: str | Path,
    *,
    skip_malformed: bool = False,
    skipped: list[DecisionLogError] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the records of a decision log; blank lines are ignored.

    A malformed line raises DecisionLogError naming the file and line number, unless
    `skip_malformed`, in which case it is skipped (and appended to `skipped` if given) —
    useful for a log whose writer died mid-line. A last line that has no newline yet and does
    not parse is a write in progress (a live log read while the server appends): it is
    passed over, never raised, and appended to `skipped` if given.
    """
    label = str(path)
    try:
        f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DecisionLogError(f"cannot read the decision log: {exc}", path=label) from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            unfinished = False
            try:
                record = json.loads(line)
                problem = record_problem(record)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
                unfinished = not line.endswith("\n")  # only the last line can lack one
            if problem is None:
                yield record
                continue
            if unfinished:
                problem = "the last line has no newline yet (a write in progress, or a writer that died mid-line)"
            error = DecisionLogError(problem, path=label, line=lineno)
            if not (skip_malformed or unfinished):
                raise error
            if skipped is not None:
                skipped.append(error)
