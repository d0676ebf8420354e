"""What both test tiers share: the repository's paths and the public data in ../shared/data.

The tier is chosen by where a test lives: tests/unit/ (toy model directories, no trained model;
tests/unit/conftest.py) and tests/integration/ (real routers trained in session fixtures, marked
`integration`; tests/integration/conftest.py). A fixture that trains or embeds real data is only
defined in tests/integration/conftest.py, so only an integration test can use one. Tests that need
the public data skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_LOG = REPO / "data" / "example-log.jsonl"


def shared_data_dir() -> Path:
    return Path(os.environ.get("ROUTER_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_shared(relative: str) -> Path:
    """Path of a public data file, or skip the test with the reason."""
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"public data not available: {path} is absent (set ROUTER_SHARED_DATA to its folder)")
    return path
