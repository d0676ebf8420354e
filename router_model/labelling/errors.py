"""The labelling errors, in the package's hierarchy."""

from __future__ import annotations

from router_model.errors import ConfigError, RouterError


class LabellingError(RouterError):
    """Labelling cannot go on (a bad requests file, an unwritable labels file)."""


class LabellingConfigError(ConfigError):
    """A rubric, shadow or labelling setting is unusable: `key` names it."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.reason = message
