"""One small exception hierarchy, so callers can catch what they can act on."""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidRequestError(RouterError, ValueError):
    """A request (prompt or chat messages) is malformed: `field` names the offending part."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class ArtifactError(RouterError):
    """A model directory is missing, truncated, tampered with or incompatible: `file` names it."""

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file
        self.reason = message


class ConfigError(RouterError, ValueError):
    """A setting (environment variable, CLI option, config file) has an unusable value."""
