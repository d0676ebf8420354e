"""The programmatic half of the rubric, and the judge's prompt template.

Checks run on one answer (the upstream's JSON) to one request, in this order: the gateway's
escalation checks (`router_model.answer_checks`), the configured JSON schema, the request's
reference answer (exact or regex), then the team's own `module:function` callables. The first
failure makes the outcome 0 and the judge is not asked; a check that cannot run (a custom
callable that raises or returns something else than bool/str) makes it *no outcome*.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from router_model.answer_checks import Checks, failed_check, schema_problem
from router_model.labelling.config import GradingSpec
from router_model.labelling.errors import LabellingConfigError

DEFAULT_RUBRIC = "single-answer-1-10.md"
PLACEHOLDERS = ("{{question}}", "{{answer}}")
_PLACEHOLDER = re.compile(r"\{\{(question|answer)\}\}")
CustomCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class CheckResult:
    """`failed` names the first failed check (None: all passed); `error` says why a check could not run."""

    failed: str | None = None
    detail: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Reference:
    """A request's expected answer: `exact` (whitespace-normalised equality) and/or `regex` (re.search)."""

    exact: str | None = None
    regex: str | None = None


def load_callable(spec: str, *, key: str = "custom_checks") -> CustomCheck:
    """`package.module:function` -> the function; named only in config, never taken from a request."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a config problem to name
        raise LabellingConfigError(f"cannot import module {module_name!r} of {spec!r}: {exc}", key=key) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LabellingConfigError(f"module {module_name!r} has no attribute {attr!r}", key=key)
        obj = getattr(obj, part)
    if not callable(obj):
        raise LabellingConfigError(f"{spec!r} is not callable", key=key)
    return obj


def load_template(path: Path | None) -> tuple[str, str]:
    """(template text, its name): the file given, else the shipped default rubric."""
    if path is None:
        text = resources.files("router_model.labelling").joinpath("rubrics", DEFAULT_RUBRIC).read_text(encoding="utf-8")
        name = DEFAULT_RUBRIC
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabellingConfigError(f"cannot read the rubric template {str(path)!r}: {exc}", key="rubric") from None
        name = Path(path).name
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise LabellingConfigError(f"the rubric template {name!r} lacks the placeholder(s) {missing}", key="rubric")
    return text, name


def answer_text(response: Mapping[str, Any]) -> str:
    """The first choice's text, or its tool calls as JSON when it has no text."""
    choices = response.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    raw = choice.get("message")
    message: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        return content
    calls = message.get("tool_calls")
    return json.dumps(calls, ensure_ascii=False) if calls else ""


def conversation_text(messages: Any) -> str:
    """The request as the judge reads it: one `role: text` block per message (images as [image])."""
    if isinstance(messages, str):
        return messages
    blocks = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, Mapping):
            continue
        content = m.get("content")
        if isinstance(content, list):
            parts = [p.get("text", "") if p.get("type") == "text" else f"[{p.get('type', 'part')}]"
                     for p in content if isinstance(p, Mapping)]
            content = "\n".join(parts)
        blocks.append(f"{m.get('role', 'user')}: {content if isinstance(content, str) else ''}")
    if len(blocks) == 1 and blocks[0].startswith("user: "):
        return blocks[0][len("user: "):]
    return "\n\n".join(blocks)


def _normalise(text: str) -> str:
    return " ".join(text.split())


class Rubric:
    """A loaded GradingSpec: checks resolved to callables, the judge template read and validated."""

    def __init__(self, spec: GradingSpec) -> None:
        self.spec = spec
        self.judge = spec.judge
        raw = dict(spec.checks)
        if "refusal_patterns" in raw:
            raw["refusal_patterns"] = tuple(raw["refusal_patterns"])
        try:
            self.checks = Checks(**raw)
        except (ValueError, TypeError) as exc:
            raise LabellingConfigError(str(exc), key="checks") from None
        self.custom: tuple[tuple[str, CustomCheck], ...] = tuple(
            (s, load_callable(s, key=f"custom_checks[{i}]")) for i, s in enumerate(spec.custom_checks)
        )
        if spec.json_schema is not None and schema_problem(spec.json_schema, None) is None:
            raise LabellingConfigError("not a valid JSON Schema", key="json_schema")
        self.template, self.template_name = load_template(spec.rubric) if spec.judge else ("", "")

    def check(self, request: Mapping[str, Any], response: Mapping[str, Any], reference: Reference | None = None) -> CheckResult:
        """Run every programmatic check on one answer; the first failure (or error) wins."""
        if self.checks.any:
            name = failed_check(request, response, self.checks)
            if name is not None:
                return CheckResult(failed=name)
        text = answer_text(response)
        if self.spec.json_schema is not None:
            try:
                value = json.loads(text)
            except ValueError:
                return CheckResult(failed="json_schema", detail="the answer is not JSON")
            if schema_problem(self.spec.json_schema, value):
                return CheckResult(failed="json_schema", detail="the answer does not fit the configured schema")
        if reference is not None:
            if reference.exact is not None and _normalise(text) != _normalise(reference.exact):
                return CheckResult(failed="reference_exact")
            if reference.regex is not None and not re.search(reference.regex, text, re.DOTALL):
                return CheckResult(failed="reference_regex")
        for spec, fn in self.custom:
            try:
                verdict = fn(request, response)
            except Exception as exc:  # noqa: BLE001 - a team's check failing is no outcome, not a crash
                return CheckResult(error=f"custom check {spec} raised {exc.__class__.__name__}: {exc}"[:300])
            if verdict is True:
                continue
            if verdict is False or (isinstance(verdict, str) and verdict):
                return CheckResult(failed=spec, detail=verdict if isinstance(verdict, str) else None)
            return CheckResult(error=f"custom check {spec} returned {verdict!r}; expected True, False or a failure reason (str)"[:300])
        return CheckResult()

    def judge_prompt(self, messages: Any, answer: str) -> str:
        """The template with the question and the answer filled in (plain replacement: braces stay as written)."""
        values = {"question": conversation_text(messages), "answer": answer}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)

