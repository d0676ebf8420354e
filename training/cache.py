"""Where training keeps what it can rebuild: exported embedders, embeddings, downloaded public data.

One root for all of it (`$ROUTER_CACHE_DIR`, else `~/.cache/router-model`), with a folder per kind.
Deleting the root only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "ROUTER_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$ROUTER_CACHE_DIR`, else `~/.cache/router-model`."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env) if env else Path.home() / ".cache" / "router-model"


def public_data_cache_dir() -> Path:
    """Downloaded public data: `<cache root>/public`."""
    return default_cache_dir() / "public"
