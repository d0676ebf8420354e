"""One small exception hierarchy, so callers can catch what they can act on."""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error this package raises on purpose."""


def item_field(field: str | None, index: int | None = None) -> str | None:
    """The path of `field` within item `index` of a batch (`requests[3].prompt`), or `field`
    itself outside a batch: the one spelling every caller shows to a user."""
    if index is None:
        return field
    return f"requests[{index}].{field}" if field else f"requests[{index}]"


class InvalidRequestError(RouterError, ValueError):
    """A request (prompt or chat messages) is malformed.

    `field` names the offending part relative to the request (`messages[0].content`); `index`
    is the request's position when it came in a batch, None otherwise. Both are data, so a
    caller that re-bases or re-spells the path (a chunked batch, a proto field name) never has
    to parse the message.
    """

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        where = item_field(field, index)
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.index = index
        self.reason = message


class ArtifactError(RouterError):
    """A model directory is missing, truncated, tampered with or incompatible: `file` names it."""

    def __init__(self, message: str, *, file: str | None = None) -> None:
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file
        self.reason = message


class ConfigError(RouterError, ValueError):
    """A setting (environment variable, CLI option, config file) has an unusable value."""
