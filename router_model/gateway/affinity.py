"""Conversations keep their model: a bounded per-process map from a conversation to the model that answered.

Two kinds of key (docs/gateway.md, "Affinity"):

- **tool-loop**: a hash of the conversation prefix up to and including the assistant turn that
  made a tool call -> the model that made it. Recorded after a routed answer with tool calls
  (`remember_answer`); a turn that only carries tool results is looked up by the same prefix
  (`tool_loop_model`) and goes back to that model, reason `affinity:tool-loop`.
- **session** (`affinity = "session"`): the `x-router-session` header or a body field
  (`affinity_session_field`) -> the model the session's first user turn was routed to, for the
  TTL, reason `affinity:session`.

The prefix hash reads only what survives a round trip through the SDKs: each message's role, its
text and its tool-call ids (`tool_calls[].id`, `tool_use.id`, `tool_call_id`, `tool_use_id`,
`call_id`), so an assistant turn sent back with extra or missing null fields hashes the same.

The store is per process: keep a session on one replica with consistent hashing on the
session key at the load balancer. Other protocol adapters (the Responses API) use the same
`Affinity` object: `tool_loop_model(messages)` / `remember_answer(messages, answer, model)`
with messages in any shape `router_model.request` reads, and `lookup(key)` / `record(key, model)`
for their own keys. A `Protocol` whose upstream keeps conversations (the Responses API) names
them with `answer_key` (an answer's id, recorded after every decided answer) and `continues`
(the `previous_response_id` a request continues, looked up in `apply`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router_model.decision import RoutingDecision
from router_model.gateway.call import Call
from router_model.gateway.config import GatewayConfig
from router_model.gateway.metrics import GatewayMetrics
from router_model.request import ITEM_ROLES, TEXT_PART_TYPES, is_tool_result_turn
from router_model.router import Router

REASON_TOOL_LOOP = "affinity:tool-loop"
REASON_SESSION = "affinity:session"
SESSION_HEADER = "x-router-session"
TOOL_LOOP, SESSION = "tool-loop", "session"


class AffinityStore:
    """An LRU map with a time-to-live and a size cap, safe across threads; counts hits, misses, evictions."""

    def __init__(self, *, ttl: float, max_entries: int, metrics: GatewayMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._metrics = metrics
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expires, model)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, *, kind: str = TOOL_LOOP) -> str | None:
        """The model stored under `key`, or None (absent or expired); a hit becomes most recently used."""
        now = self._clock()
        with self._lock:
            item = self._items.get(key)
            if item is not None and item[0] <= now:
                del self._items[key]
                self._evicted("expired")
                item = None
            if item is not None:
                self._items.move_to_end(key)
        if self._metrics is not None:
            (self._metrics.affinity_hits if item is not None else self._metrics.affinity_misses).labels(kind).inc()
        return item[1] if item is not None else None

    def put(self, key: str, model: str) -> None:
        """Store `model` under `key` for the TTL; the least recently used entry goes when full."""
        now = self._clock()
        with self._lock:
            self._items[key] = (now + self.ttl, model)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                _, (expires, _) = self._items.popitem(last=False)
                self._evicted("expired" if expires <= now else "capacity")

    def _evicted(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.affinity_evictions.labels(reason).inc()


def _canonical(message: Any) -> list[Any]:
    """What identifies one message across a round trip: role, texts, tool-call ids."""
    if not isinstance(message, Mapping):
        return [None]
    kind = message.get("type")
    role = message.get("role") or (ITEM_ROLES.get(kind, kind) if isinstance(kind, str) else None)
    texts: list[str] = []
    ids: list[str] = []

    def content(value: Any) -> None:
        if isinstance(value, str):
            if value:
                texts.append(value)
            return
        if not isinstance(value, Sequence):
            return
        for part in value:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") in TEXT_PART_TYPES and isinstance(part.get("text"), str) and part["text"]:
                texts.append(part["text"])
            for id_field in ("id", "tool_use_id", "call_id"):
                if isinstance(part.get(id_field), str) and part.get("type") != "text":
                    ids.append(part[id_field])
            if part.get("type") == "tool_result":
                content(part.get("content"))

    content(message.get("content"))
    content(message.get("output"))
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping) and isinstance(call.get("id"), str):
            ids.append(call["id"])
    for id_field in ("tool_call_id", "call_id"):
        if isinstance(message.get(id_field), str):
            ids.append(message[id_field])
    return [role, texts, ids]


def conversation_key(messages: Sequence[Any]) -> str:
    """The hash of a conversation (a prefix of one): what `_canonical` keeps of each message."""
    text = json.dumps([_canonical(m) for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _is_tool_results(message: Any) -> bool:
    return is_tool_result_turn([message])


def tool_call_prefix(messages: Sequence[Any]) -> Sequence[Any] | None:
    """For a turn that only carries tool results: the conversation up to and including the
    assistant turn that made the tool calls; None for any other turn."""
    if not is_tool_result_turn(messages):
        return None
    end = len(messages)
    while end > 0 and _is_tool_results(messages[end - 1]):
        end -= 1
    return messages[:end] if end > 0 else None


def _dotted(body: Mapping[str, Any], path: str) -> Any:
    value: Any = body
    for name in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


class Affinity:
    """The gateway's affinity rules over one `AffinityStore` (mode from `config.affinity`)."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.mode = config.affinity
        self.store = AffinityStore(ttl=config.affinity_ttl_seconds, max_entries=config.affinity_max_entries, metrics=metrics)
        self._fields = tuple(f.strip() for f in config.affinity_session_field.split(",") if f.strip())

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    # --- the interface for every protocol adapter ------------------------------------------
    def lookup(self, key: str, *, kind: str = TOOL_LOOP) -> str | None:
        return self.store.get(key, kind=kind) if self.enabled else None

    def record(self, key: str, model: str) -> None:
        if self.enabled:
            self.store.put(key, model)

    def tool_loop_model(self, messages: Sequence[Any]) -> str | None:
        """The model that made the tool calls whose results this turn carries (None: not such a turn, or unknown)."""
        if not self.enabled:
            return None
        prefix = tool_call_prefix(messages)
        return self.lookup(conversation_key(prefix)) if prefix is not None else None

    def remember_answer(self, messages: Sequence[Any], answer: Sequence[Any], model: str) -> None:
        """After an answer with tool calls: the conversation so far (`messages` + the answer's
        assistant turn or items) -> the model that answered."""
        if self.enabled:
            self.record(conversation_key([*messages, *answer]), model)

    def session_key(self, headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
        """The session a request belongs to: `x-router-session`, else the first configured body field."""
        value: Any = headers.get(SESSION_HEADER)
        for path in self._fields:
            if value:
                break
            value = _dotted(body, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        return f"session:{value}" if isinstance(value, str) and value.strip() else None

    # --- the decision step --------------------------------------------------------------------
    def kept(self, call: Call, router: Router, messages: Sequence[Any]) -> tuple[str, str] | None:
        """The model this call's conversation is on and the reason (`affinity:*`): a tool-result turn's
        tool-calling model, a continued answer's model, a pinned session's model; None: decide afresh.
        Looks up only (records nothing)."""
        if not self.enabled:
            return None
        kept = self.tool_loop_model(messages)
        reason = REASON_TOOL_LOOP
        if kept is None:
            kept, reason = self._continued(call, messages)
        if kept is None and self.mode == SESSION:
            session = self.session_key(call.in_headers, call.body)
            if session is not None:
                kept, reason = self.lookup(session, kind=SESSION), REASON_SESSION
        allowed = set(router.models) | {router.cheap_model, router.strong_model}
        return (kept, reason) if kept is not None and kept in allowed else None

    def apply(self, call: Call, router: Router, decision: RoutingDecision, messages: Sequence[Any]) -> RoutingDecision:
        """The decision the call keeps: the model its conversation is on (`kept`), else `decision`
        (pinning a new session to it)."""
        if not self.enabled:
            return decision
        found = self.kept(call, router, messages)
        if found is None:
            session = self.session_key(call.in_headers, call.body) if self.mode == SESSION else None
            if session is not None:
                self.record(session, decision.model)
            return decision
        call.fresh_model = decision.model
        return dataclasses.replace(decision, model=found[0], reason=found[1])

    def _continued(self, call: Call, messages: Sequence[Any]) -> tuple[str | None, str]:
        """A request that continues an answer the upstream keeps (`previous_response_id`): the model
        that gave it. A turn of tool results always goes back to it (`affinity:tool-loop`); a new
        user turn only in "session" mode (`affinity:session`), else it is decided afresh."""
        continues = call.protocol.continues
        key = continues(call.body) if continues is not None else None
        if key is None:
            return None, REASON_TOOL_LOOP
        if is_tool_result_turn(messages):
            return self.lookup(key), REASON_TOOL_LOOP
        if self.mode == SESSION:
            return self.lookup(key, kind=SESSION), REASON_SESSION
        return None, REASON_TOOL_LOOP

    def after_answer(self, call: Call, answer: Sequence[Any] | None, messages: Sequence[Any],
                     key: str | None = None) -> None:
        """Record a decided call's answer: its tool calls (answer: its assistant turn/items; None: none)
        under the conversation's hash, and the answer's own key (`key`: a Responses answer's id) to the
        model that gave it."""
        if call.decision is None or (not answer and key is None):
            return
        model = call.served if call.mode == "route" else call.decision.model
        if answer:
            self.remember_answer(messages, answer, model)
        if key is not None:
            self.record(key, model)
