"""Who may call the admin RPC (Reload), and which directories it may name.

Reload can make the server read any path it names, so it is off unless the operator opts in:
with an admin token (compared in constant time) or with `allow_reload` for a trusted network.
A named directory must lie under the reload root; one outside it is answered only "refused",
so a caller cannot use the error messages to probe the file system.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

from router_model.service.config import ServerConfig
from router_model.service.status import RpcStatusError

# The metadata header that carries the admin token.
ADMIN_TOKEN_HEADER = "x-router-admin-token"
# Longer than any real path (PATH_MAX is 4096 on Linux): refused before touching the disk.
MAX_PATH_CHARS = 4096
REFUSED = "refused"


def check_admin(config: ServerConfig, context: grpc.ServicerContext) -> None:
    """Refuse an admin call that is not authorised by the configuration."""
    if config.admin_token is None:
        if config.allow_reload:
            return
        raise RpcStatusError(
            grpc.StatusCode.PERMISSION_DENIED,
            "Reload is disabled on this server (start it with --admin-token-file or --allow-reload)",
        )
    sent = b""
    for key, value in context.invocation_metadata():
        if key == ADMIN_TOKEN_HEADER:
            sent = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    if not hmac.compare_digest(sent, config.admin_token):
        raise RpcStatusError(grpc.StatusCode.PERMISSION_DENIED, f"{REFUSED}: missing or wrong {ADMIN_TOKEN_HEADER}")


def reload_target(raw: str, root: Path | None) -> Path:
    """The directory a Reload names, checked against the reload root.

    Malformed names are INVALID_ARGUMENT; a name resolving (symlinks followed) outside the root
    is PERMISSION_DENIED "refused", whether or not it exists. A relative name is under the root.
    """
    if "\x00" in raw:
        raise RpcStatusError(grpc.StatusCode.INVALID_ARGUMENT, "model_dir: contains a NUL character")
    if len(raw) > MAX_PATH_CHARS:
        raise RpcStatusError(
            grpc.StatusCode.INVALID_ARGUMENT, f"model_dir: {len(raw)} characters, over the limit of {MAX_PATH_CHARS}"
        )
    if root is None:
        raise RpcStatusError(grpc.StatusCode.PERMISSION_DENIED, f"{REFUSED} (no --model-root configured)")
    target = Path(root) / raw
    try:
        real_root = os.path.realpath(root)
        real = os.path.realpath(target)
        inside = os.path.commonpath([real_root, real]) == real_root
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise RpcStatusError(grpc.StatusCode.PERMISSION_DENIED, REFUSED)
    return target
