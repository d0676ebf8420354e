"""Where training keeps what it can rebuild: exported embedders, embeddings, downloaded public data.

One root for all of it (`$ROUTER_CACHE_DIR`, else `~/.cache/router-model`), with a folder per kind.
Deleting the root only costs time.
"""

from __future__ import annotations

from pathlib import Path

from router_model.settings import ENV_CACHE_DIR, cache_root  # noqa: F401 - the one cache root

default_cache_dir = cache_root


def public_data_cache_dir() -> Path:
    """Downloaded public data: `<cache root>/public`."""
    return default_cache_dir() / "public"
