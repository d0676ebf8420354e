"""Loading refused without any model: a missing directory. The inference package on a real trained
artifact is tests/integration/test_router.py; on toy artifacts, tests/unit/test_toy_router.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_model.errors import ArtifactError
from router_model.router import Router


def _refused(path: Path, **kw) -> ArtifactError:
    with pytest.raises(ArtifactError) as exc:
        Router.load(path, **kw)
    return exc.value


def test_refuses_missing_dir(tmp_path: Path) -> None:
    e = _refused(tmp_path / "nope")
    assert e.file == str(tmp_path / "nope") and "does not exist" in str(e)
