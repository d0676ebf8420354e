"""Settings shared by every entry point: environment variable names, defaults, value parsers.

`predict_model()` (router_model.api) and `router-serve` (router_model.service.cli) read the same
model settings, so they are spelled once here: ROUTER_MODEL_DIR, ROUTER_MODEL_GRAPH,
ROUTER_MODEL_THREADS. A bad value is a ConfigError naming the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from router_model.errors import ConfigError

T = TypeVar("T")

ENV_MODEL_DIR = "ROUTER_MODEL_DIR"
ENV_GRAPH = "ROUTER_MODEL_GRAPH"
ENV_THREADS = "ROUTER_MODEL_THREADS"
# Names an earlier router-serve read; refused (not ignored) so a deployment notices the rename.
RENAMED_ENV = {"ROUTER_GRAPH": ENV_GRAPH, "ROUTER_THREADS": ENV_THREADS}

# The graphs a model directory holds (router_model.artifact maps them to files), in serving preference.
FP32 = "fp32"
INT8 = "int8"
GRAPHS = (INT8, FP32)
# Loopback unless told otherwise: Reload can point a server at any readable directory.
DEFAULT_HOST = "127.0.0.1"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def env(name: str, parse: Callable[[str], T], default: T) -> T:
    """The variable `name` parsed (surrounding blanks stripped), or `default` when it is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse(raw.strip())
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"environment variable {name}={raw!r}: {e}") from None


def check_renamed() -> None:
    """Refuse variables that were renamed, so an old setting is never silently dropped."""
    for old, new in RENAMED_ENV.items():
        if old in os.environ:
            raise ConfigError(f"environment variable {old} was renamed {new}; set {new} instead")


def parse_bool(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); empty means false."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE - {''})}")


def parse_choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    """A parser accepting only `choices` (after upper-casing the text when `upper`)."""

    def parse(text: str) -> str:
        text = text.upper() if upper else text
        if text not in choices:
            raise ValueError(f"expected one of {list(choices)}")
        return text

    return parse


ENV_PROMPT_HASH_KEY = "ROUTER_PROMPT_HASH_KEY"


def read_secret(path: Path, what: str) -> bytes:
    """A secret from a file (surrounding whitespace stripped); ConfigError when unusable."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
    if not data:
        raise ConfigError(f"the {what} file {path} is empty")
    return data


def secret(path: Path | None, variable: str, what: str) -> bytes | None:
    """A secret from `path`, else from the environment variable `variable`, else None."""
    if path is not None:
        return read_secret(path, what)
    value = os.environ.get(variable, "").strip()
    return value.encode() if value else None


ENV_CACHE_DIR = "ROUTER_CACHE_DIR"


def cache_root() -> Path:
    """Where everything rebuildable lives (exported embedders, embeddings, public data, downloaded
    registry versions): `$ROUTER_CACHE_DIR`, else `~/.cache/router-model`. Deleting it only costs time."""
    root = os.environ.get(ENV_CACHE_DIR)
    return Path(root) if root else Path.home() / ".cache" / "router-model"
