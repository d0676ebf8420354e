"""POST /v1/chat/completions: the routed flow (routed.py) with the chat-completion protocol (call.py `CHAT`)."""

from __future__ import annotations

from router_model.gateway.call import CHAT, Protocol
from router_model.gateway.routed import RoutedEndpoint, error_response

__all__ = ["ChatCompletions", "error_response"]


class ChatCompletions(RoutedEndpoint):
    """The chat-completions endpoint of one gateway."""

    protocol: Protocol = CHAT
