"""policy.yaml: a day-0 routing policy, read and validated before anything is built.

A policy names the pair, the router's rules, and routes: each a tier (cheap or strong) and a
few example requests. Every problem is reported with the file and the field at fault
(`routes[2].examples: empty`), so a team editing the file by hand gets told exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router_model.artifact import POLICY_TIERS
from router_model.decision import RoutingRules
from router_model.errors import ConfigError

DEFAULT_POLICY = Path(__file__).resolve().parent / "default.yaml"

ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")  # it becomes `policy:<name>` in reasons and metric labels
MAX_EXAMPLE_CHARS = 4000
MAX_EXAMPLES = 500  # in all: the examples are a matrix inside the graph

TOP_KEYS = ("name", "cheap_model", "strong_model", "embedder", "threshold", "scoring", "rules", "routes")
ROUTE_KEYS = ("name", "tier", "description", "examples")
SCORING_KEYS = ("sharpness", "bias", "temperature")
RULE_KEYS = ("image_to_strong", "strong_tags", "max_tokens")


class PolicyError(ConfigError):
    """policy.yaml is unusable: `file` and `field` name what to fix."""

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None) -> None:
        where = ": ".join(str(x) for x in (file, field) if x)
        super().__init__(f"{where}: {message}" if where else message)
        self.file = str(file) if file is not None else None
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class Route:
    name: str
    tier: str
    examples: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Scoring:
    """How similarities become a score: p_cheap_ok = sigmoid(sharpness * (best cheap sim - best strong sim) + bias);
    within a tier, softmax(sim / temperature) shares that tier's probability among its routes."""

    sharpness: float = 20.0
    bias: float = 0.0
    temperature: float = 0.05

    def as_dict(self) -> dict[str, float]:
        return {"sharpness": self.sharpness, "bias": self.bias, "temperature": self.temperature}


@dataclass(frozen=True)
class Policy:
    name: str
    cheap_model: str
    strong_model: str
    routes: tuple[Route, ...]
    threshold: float = 0.5
    embedder: str | None = None
    scoring: Scoring = Scoring()
    rules: Mapping[str, Any] = field(default_factory=dict)  # RoutingRules fields, as written (validated)

    @property
    def ordered_routes(self) -> tuple[Route, ...]:
        """Cheap routes first, then strong, each in file order: the artifact's class order."""
        return tuple(r for t in POLICY_TIERS for r in self.routes if r.tier == t)

    def routing_rules(self) -> RoutingRules:
        tags = self.rules.get("strong_tags")
        return RoutingRules(**{**self.rules, **({"strong_tags": frozenset(tags)} if tags is not None else {})})


def _unknown(d: Mapping[str, Any], allowed: tuple[str, ...], file: Path | str, *, prefix: str) -> None:
    for k in d:
        if k not in allowed:
            raise PolicyError(f"unknown key (expected one of {', '.join(allowed)})", file=file, field=f"{prefix}{k}")


def _number(value: Any, file: Path | str, fld: str, *, lo: float | None = None, hi: float | None = None,
            positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"expected a number, got {value!r}", file=file, field=fld)
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi) or (positive and v <= 0) or v != v:
        bound = f"in [{lo}, {hi}]" if lo is not None else "> 0" if positive else "finite"
        raise PolicyError(f"expected a number {bound}, got {value!r}", file=file, field=fld)
    return v


def _text(value: Any, file: Path | str, fld: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"expected a non-empty string, got {value!r}", file=file, field=fld)
    return value.strip()


def _route(raw: Any, i: int, file: Path | str) -> Route:
    at = f"routes[{i}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"expected a mapping with name, tier, examples; got {type(raw).__name__}", file=file, field=at)
    _unknown(raw, ROUTE_KEYS, file, prefix=f"{at}.")
    for k in ("name", "tier", "examples"):
        if k not in raw:
            raise PolicyError("missing", file=file, field=f"{at}.{k}")
    name = _text(raw["name"], file, f"{at}.name")
    if not ROUTE_NAME.match(name):
        raise PolicyError(f"{name!r} is not a route name (lower-case letters, digits, '_', '-', '.'; at most 64)",
                          file=file, field=f"{at}.name")
    tier = raw["tier"]
    if tier not in POLICY_TIERS:
        raise PolicyError(f"expected one of {', '.join(POLICY_TIERS)}, got {tier!r}", file=file, field=f"{at}.tier")
    ex = raw["examples"]
    if not isinstance(ex, list):
        raise PolicyError(f"expected a list of example requests, got {type(ex).__name__}", file=file, field=f"{at}.examples")
    if not ex:
        raise PolicyError("empty: a route needs at least one example request", file=file, field=f"{at}.examples")
    examples = []
    for j, e in enumerate(ex):
        text = _text(e, file, f"{at}.examples[{j}]")
        if len(text) > MAX_EXAMPLE_CHARS:
            raise PolicyError(f"{len(text)} characters, over {MAX_EXAMPLE_CHARS}: an example is a request's gist, "
                              "not a document", file=file, field=f"{at}.examples[{j}]")
        examples.append(text)
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise PolicyError("expected a string", file=file, field=f"{at}.description")
    return Route(name, str(tier), tuple(examples), desc.strip())


def _rules(raw: Any, file: Path | str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"expected a mapping, got {type(raw).__name__}", file=file, field="rules")
    _unknown(raw, RULE_KEYS, file, prefix="rules.")
    out: dict[str, Any] = {}
    if "image_to_strong" in raw:
        if not isinstance(raw["image_to_strong"], bool):
            raise PolicyError(f"expected true or false, got {raw['image_to_strong']!r}", file=file, field="rules.image_to_strong")
        out["image_to_strong"] = raw["image_to_strong"]
    if "strong_tags" in raw:
        tags = raw["strong_tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
            raise PolicyError(f"expected a list of tag strings, got {tags!r}", file=file, field="rules.strong_tags")
        out["strong_tags"] = sorted({t.strip().lower() for t in tags})
    if "max_tokens" in raw:
        m = raw["max_tokens"]
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise PolicyError(f"expected a positive integer or null (no limit), got {m!r}", file=file, field="rules.max_tokens")
        out["max_tokens"] = m
    return out


def parse_policy(raw: Any, file: Path | str = "policy.yaml") -> Policy:
    """Validate a policy's parsed YAML; raise PolicyError naming the field."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"expected a mapping at the top level, got {type(raw).__name__}", file=file)
    _unknown(raw, TOP_KEYS, file, prefix="")
    for k in ("cheap_model", "strong_model", "routes"):
        if k not in raw:
            raise PolicyError("missing", file=file, field=k)
    cheap, strong = _text(raw["cheap_model"], file, "cheap_model"), _text(raw["strong_model"], file, "strong_model")
    if cheap == strong:
        raise PolicyError(f"the cheap and the strong model must differ (both {cheap!r})", file=file, field="strong_model")
    if not isinstance(raw["routes"], list):
        raise PolicyError(f"expected a list of routes, got {type(raw['routes']).__name__}", file=file, field="routes")
    routes = tuple(_route(r, i, file) for i, r in enumerate(raw["routes"]))
    seen: dict[str, int] = {}
    for i, r in enumerate(routes):
        if r.name in seen:
            raise PolicyError(f"duplicate route name {r.name!r} (also routes[{seen[r.name]}])", file=file, field=f"routes[{i}].name")
        seen[r.name] = i
    for tier in POLICY_TIERS:
        if not any(r.tier == tier for r in routes):
            raise PolicyError(f"no route with tier {tier!r}: a policy needs at least one cheap and one strong route",
                              file=file, field="routes")
    n = sum(len(r.examples) for r in routes)
    if n > MAX_EXAMPLES:
        raise PolicyError(f"{n} examples in all, over {MAX_EXAMPLES}", file=file, field="routes")
    sc = raw.get("scoring", {}) or {}
    if not isinstance(sc, Mapping):
        raise PolicyError(f"expected a mapping, got {type(sc).__name__}", file=file, field="scoring")
    _unknown(sc, SCORING_KEYS, file, prefix="scoring.")
    d = Scoring()
    scoring = Scoring(
        sharpness=_number(sc.get("sharpness", d.sharpness), file, "scoring.sharpness", positive=True),
        bias=_number(sc.get("bias", d.bias), file, "scoring.bias", lo=-50.0, hi=50.0),
        temperature=_number(sc.get("temperature", d.temperature), file, "scoring.temperature", positive=True),
    )
    embedder = raw.get("embedder")
    return Policy(
        name=_text(raw.get("name", Path(file).stem), file, "name"),
        cheap_model=cheap,
        strong_model=strong,
        routes=routes,
        threshold=_number(raw.get("threshold", 0.5), file, "threshold", lo=0.0, hi=1.0),
        embedder=_text(embedder, file, "embedder") if embedder is not None else None,
        scoring=scoring,
        rules=_rules(raw.get("rules", {}) or {}, file),
    )


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (YAML; safe_load only: nothing in it is executed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PolicyError("not found (or not a file)", file=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PolicyError(f"not UTF-8 text ({e})", file=path) from e
    except yaml.YAMLError as e:
        raise PolicyError(f"not valid YAML: {e}", file=path) from e
    return parse_policy(raw, path)
