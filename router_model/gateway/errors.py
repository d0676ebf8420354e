"""The gateway's errors: each one becomes an OpenAI-style error body with an HTTP status."""

from __future__ import annotations

from typing import Any

from router_model.errors import ConfigError, RouterError


class GatewayConfigError(ConfigError):
    """The gateway's config file or options are unusable: `key` names the setting at fault."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        where = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.file = file
        self.reason = message


class GatewayError(RouterError):
    """An error answered to the client as `{"error": {"message", "type", "code", "param"}}`."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


class BadRequestError(GatewayError):
    """The client's body or headers are malformed (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSONError(BadRequestError):
    code = "invalid_json"


class BodyTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RouterNotReadyError(GatewayError):
    """No router is loaded yet (or the configured directory is bad) (503)."""

    status = 503
    type = "service_unavailable"
    code = "router_not_ready"


class UpstreamError(GatewayError):
    """The upstream could not be reached or failed (502)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamFailedError(UpstreamError):
    """The upstream answered 5xx."""

    code = "upstream_failed"


class UpstreamInvalidError(UpstreamError):
    """The upstream answered 200 with a body that is not an OpenAI response."""

    code = "upstream_invalid_response"


class UpstreamTooLargeError(UpstreamError):
    """The upstream's non-streamed answer is larger than `max_response_bytes` (not buffered further)."""

    code = "upstream_response_too_large"


class UpstreamTimeoutError(GatewayError):
    """The upstream did not answer within the configured timeout (504)."""

    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
