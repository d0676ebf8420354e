"""The registry parts on their own: `models:/` URIs. Promotion (real routers trained on public
data, a real MLflow registry, serving that follows an alias) is tests/integration/test_promote.py."""

from __future__ import annotations

import pytest


def test_model_uri_forms() -> None:
    from router_model.errors import ConfigError
    from router_model.registry import ModelUri

    assert ModelUri.parse("models:/router-model@champion") == ModelUri("router-model", alias="champion")
    assert ModelUri.parse("models:/router-model/3") == ModelUri("router-model", version="3")
    assert str(ModelUri.parse("models:/m/3")) == "models:/m/3"
    for bad in ("runs:/abc/model", "models:/", "models:/m/latest", "models:/m@", "models:/@champion"):
        with pytest.raises(ConfigError, match="models:/"):
            ModelUri.parse(bad)
