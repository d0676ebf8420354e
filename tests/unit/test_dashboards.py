"""deploy/grafana/ and deploy/prometheus/ query only series the code exports.

Every PromQL expression of the Grafana dashboard (panel targets, template variables) and of the
Prometheus rule file is tokenised: each metric name must be a sample name that
`GatewayMetrics` (router-gateway) or the gRPC service's `Metrics` (router-serve) exports, or a
recording rule of the rule file; each label in a matcher must be one that series carries; each
label in by / without / on / ignoring / group_left / group_right must be carried by a series of
the same expression. Scrape-time target labels (`job`, `instance`) are allowed everywhere. The
exported names and labels are read from the real registries (`registry.collect()`) after every
labelled series has been given one child, so a renamed metric or label fails here, not on a
dashboard showing "No data". The reverse holds too: every family the code exports is on the
dashboard, so a new metric comes with a panel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from router_model.gateway.app import create_app
from router_model.gateway.config import GatewayConfig, Upstream
from router_model.gateway.metrics import GatewayMetrics
from router_model.gateway.server import ServerThread
from router_model.service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "router-model.json"
RULES = REPO / "deploy" / "prometheus" / "router-model-rules.yml"
OPERATIONS = REPO / "docs" / "operations.md"

# Added by Prometheus at scrape time, not by the code.
SCRAPE_LABELS = frozenset({"job", "instance"})
SEVERITIES = frozenset({"page", "ticket"})
AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
})
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label",
    "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh",
    "time", "timestamp", "vector", "year",
}) | AGGREGATIONS
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2",
    "inf", "nan", "start", "end",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")  # Grafana's $__rate_interval, $job, ${datasource}
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*""\s*(?:,|$)')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|[A-Za-z_:][\w:]*(?=\s*(\()?)")
_LABEL_VALUES = re.compile(r"\s*label_values\s*\((?:(.*),)?\s*([A-Za-z_]\w*)\s*\)\s*")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


@dataclass
class Query:
    """What one PromQL expression reads: metric name -> labels in its matchers (every occurrence),
    the grouping labels, and what could not be read (unknown functions, name-less selectors)."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.selectors}


def parse(expr: str) -> Query:
    """Tokenise a PromQL expression (string literals, template variables and ranges stripped)."""
    q = Query()
    text = _VARIABLE.sub(" 0 ", _STRING.sub('""', expr))

    def selector(m: re.Match[str]) -> str:
        name, body = m.group(1), m.group(2)
        labels = {lm.group(1) for lm in _MATCHER.finditer(body)}
        if _MATCHER.sub("", body).strip():
            q.errors.append(f"unreadable matchers {{{body}}} in {expr!r}")
        if not name or name in KEYWORDS or name in FUNCTIONS:
            q.errors.append(f"selector without a metric name {{{body}}} in {expr!r}")
            return " "
        q.selectors.append((name, labels))
        return " "

    text = _SELECTOR.sub(selector, text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries: durations only

    def grouping(m: re.Match[str]) -> str:
        q.grouping |= {label.strip() for label in m.group(2).split(",") if label.strip()}
        return " "  # so that `sum by (x) (...)` reads as the call `sum (...)`

    text = _GROUPING.sub(grouping, text)
    for m in _TOKEN.finditer(text):
        token = m.group(0)
        if token[0].isdigit() or token in KEYWORDS:
            continue
        if m.group(1):  # followed by "(": a call
            if token not in FUNCTIONS:
                q.errors.append(f"unknown function {token}() in {expr!r}")
            continue
        q.selectors.append((token, set()))
    return q


def carried_labels(q: Query, exported: dict[str, set[str]], recorded: dict[str, set[str]]) -> set[str]:
    """Every label a series read by the query carries (a scraped series: also the target's)."""
    out: set[str] = set()
    for name in q.names:
        if name in exported:
            out |= exported[name] | SCRAPE_LABELS
        out |= recorded.get(name, set())
    return out


def problems(expr: str, exported: dict[str, set[str]], recorded: dict[str, set[str]] | None = None) -> list[str]:
    """Why `expr` would query a series nobody exports ([] when every name and label is real)."""
    recorded = recorded or {}
    known = {**exported, **recorded}
    q = parse(expr)
    out = list(q.errors)
    if not q.selectors:
        out.append(f"no series in {expr!r}")
    carried = carried_labels(q, exported, recorded)
    for name, labels in q.selectors:
        if name not in known:
            out.append(f"{name} is not exported by the gateway or the gRPC service (nor recorded) in {expr!r}")
            continue
        has = exported[name] | SCRAPE_LABELS if name in exported else recorded[name]
        bad = labels - has
        if bad:
            out.append(f"{name} has no label {sorted(bad)} (it has {sorted(has)}) in {expr!r}")
    bad = q.grouping - carried
    if bad:
        out.append(f"grouping by {sorted(bad)}, which no series of {expr!r} carries")
    return out


# ---------------------------------------------------------------- what the code exports


def _wrappers(obj: object, seen: set[int]) -> Iterator[MetricWrapperBase]:
    """The prometheus_client metrics held by `obj` and the router_model objects it holds."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for value in vars(obj).values():
        if isinstance(value, MetricWrapperBase):
            yield value
        elif type(value).__module__.startswith("router_model.") and hasattr(value, "__dict__"):
            yield from _wrappers(value, seen)


def exported_series(owner: GatewayMetrics | Metrics) -> dict[str, set[str]]:
    """Sample name -> label names, read from the owner's registry once every labelled metric has a
    child and every optional collector (decision log, served version) is on."""
    for metric in _wrappers(owner, set()):
        if metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    owner.serving.model_loaded("v-test")
    owner.serving.watch_decision_log(lambda: 0)
    out: dict[str, set[str]] = {}
    for family in owner.registry.collect():
        assert family.samples, f"{family.name} exports no sample: a labelled metric the walk above did not find"
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


@pytest.fixture(scope="module")
def gateway_series() -> dict[str, set[str]]:
    return exported_series(GatewayMetrics())


@pytest.fixture(scope="module")
def service_series() -> dict[str, set[str]]:
    return exported_series(Metrics())


@pytest.fixture(scope="module")
def exported(gateway_series: dict[str, set[str]], service_series: dict[str, set[str]]) -> dict[str, set[str]]:
    assert not set(gateway_series) & set(service_series), "the two front doors spell their series differently"
    return {**gateway_series, **service_series}


def test_a_running_gateway_exports_what_the_check_reads(exported: dict[str, set[str]], upstream, router):
    """A gateway serving requests: every sample on its /metrics is one `exported` knows (with its
    labels), and the upstream latency the dashboard shows is observed, streamed or not."""
    server = ServerThread(create_app(GatewayConfig(upstream=Upstream(upstream.url), mode="route"), router=router)).start()
    try:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        for stream in (False, True):
            resp = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream}, timeout=30)
            assert resp.status_code == 200, resp.text
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    for s in samples:
        assert s.name in exported and set(s.labels) <= exported[s.name], (s.name, s.labels)
    counts = [s.value for s in samples if s.name == "router_gateway_upstream_latency_seconds_count"]
    assert sum(counts) == 2 and all(s.labels["model"] for s in samples if s.name.startswith("router_gateway_upstream_latency"))


# ---------------------------------------------------------------- the files


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def _variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((v["name"], query))
    return out


def _rules() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def recorded_series(groups: list[dict[str, Any]], exported: dict[str, set[str]]) -> dict[str, set[str]]:
    """Recording rule -> the labels its series carry: its grouping labels (or, without one, those of
    the series it reads) and its static labels."""
    out: dict[str, set[str]] = {}
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                q = parse(rule["expr"])
                out[rule["record"]] = (q.grouping or carried_labels(q, exported, out)) | set(rule.get("labels", {}))
    return out


# ---------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(("expr", "why"), [
    ("sum(rate(router_gateway_decisons_total[5m]))", "not exported"),  # misspelt metric
    ("rate(router_gateway_decisions[5m])", "not exported"),  # a counter without its _total
    ("router_gateway_decision_seconds", "not exported"),  # a histogram without _bucket/_sum/_count
    ('sum(rate(router_gateway_decisions_total{modle="route"}[5m]))', "has no label"),  # misspelt label
    ('rate(router_decisions_total{mode="route"}[5m])', "has no label"),  # the service has no mode
    ("sum by (kind) (rate(router_gateway_decisions_total[5m]))", "grouping by"),
    ("histogram_quantile(0.99, sum by (le) (rate(router_gateway_requests_total[5m])))", "grouping by"),
    ("sum(rat(router_gateway_decisions_total[5m]))", "unknown function"),
    ('sum(rate({__name__="router_gateway_decisions_total"}[5m]))', "without a metric name"),
    ("router:made_up:rate5m > 1", "nor recorded"),
    ('router_gateway:escalations:ratio_rate10m{instance="a"} > 0.1', "has no label"),  # summed by job only
])
def test_the_checker_refuses_a_fabricated_series(expr: str, why: str, exported: dict[str, set[str]]):
    found = problems(expr, exported, recorded_series(_rules(), exported))
    assert found and any(why in p for p in found), found


def test_the_checker_reads_real_expressions(exported: dict[str, set[str]]):
    for expr in (
        'sum by (model) (rate(router_gateway_decisions_total{job=~"$job",mode=~"$mode"}[$__rate_interval]))',
        "histogram_quantile(0.99, sum by (job, le) (rate(router_decision_seconds_bucket[5m])))",
        "router_gateway_drift_psi_p_cheap_ok >= 0.25 and router_gateway_drift_decisions >= 500",
        'sum by (job, kind) (rate(router_gateway_upstream_errors_total[5m])) / on (job) group_left '
        'sum by (job) (rate(router_gateway_upstream_requests_total{status=~"5.."}[5m])) offset 1d',
        "count by (artifact_version) (router_model_info) > 1e0",
    ):
        assert problems(expr, exported) == [], expr


# ---------------------------------------------------------------- the dashboard


def test_dashboard_queries_only_exported_series(exported: dict[str, set[str]]):
    dashboard = _dashboard()
    exprs = _dashboard_exprs(dashboard)
    assert len(exprs) > 40
    found = [f"panel {title!r}: {p}" for title, expr in exprs for p in problems(expr, exported)]
    assert not found, "\n".join(found)
    # the dashboard works without the rule file: no recording rule is read
    recorded = recorded_series(_rules(), exported)
    assert not {n for _, e in exprs for n in parse(e).names} & set(recorded)


def test_dashboard_variables_read_exported_labels(exported: dict[str, set[str]]):
    queries = _variable_queries(_dashboard())
    assert {name for name, _ in queries} >= {"job", "instance", "service_job", "service_instance"}
    for name, query in queries:
        m = _LABEL_VALUES.fullmatch(query)
        assert m and m.group(1), f"variable {name}: expected label_values(series, label), got {query!r}"
        assert problems(m.group(1), exported) == [], name
        (series,) = parse(m.group(1)).names
        assert m.group(2) in exported[series] | SCRAPE_LABELS, f"variable {name}: {series} has no label {m.group(2)}"


def test_dashboard_shows_every_exported_family(exported: dict[str, set[str]]):
    queried = {n for _, e in _dashboard_exprs(_dashboard()) for n in parse(e).names}
    families = {}
    for owner in (GatewayMetrics(), Metrics()):
        owner.serving.watch_decision_log(lambda: 0)
        families.update({f.name: {s.name for s in f.samples} | {f.name, f"{f.name}_total", f"{f.name}_bucket"}
                         for f in owner.registry.collect()})
    missing = sorted(name for name, samples in families.items() if not samples & queried)
    assert not missing, f"exported but on no panel of {DASHBOARD.name} (add one): {missing}"


def test_dashboard_covers_the_issue():
    queried = {n for _, e in _dashboard_exprs(_dashboard()) for n in parse(e).names}
    for series in (
        "router_gateway_decisions_total",  # routed share
        "router_gateway_baseline_cost_usd_total", "router_gateway_routed_cost_usd_total",  # savings vs always-strong
        "router_gateway_escalations_total", "router_gateway_fallbacks_total",
        "router_gateway_decision_seconds_bucket", "router_gateway_upstream_latency_seconds_bucket",
        "router_gateway_upstream_errors_total",  # errors by kind
        "router_gateway_drift_psi_p_cheap_ok", "router_gateway_shadow_queue_depth", "router_gateway_shadow_dropped_total",
        "router_gateway_affinity_hits_total",
        "router_decisions_total", "router_decision_seconds_bucket", "router_reloads_total", "router_model_loaded",
        "router_drift_psi_p_cheap_ok",
    ):
        assert series in queried, series


def test_dashboard_is_importable():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert p["datasource"] == ref, f"{p['title']!r}: datasource must be the ${{datasource}} variable"
        assert p["targets"] and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ref and t["expr"].strip(), p["title"]


# ---------------------------------------------------------------- the rules


def test_rules_query_only_exported_or_recorded_series(exported: dict[str, set[str]]):
    groups = _rules()
    recorded = recorded_series(groups, exported)
    assert recorded and all(":" in name for name in recorded), "recording rules are named level:metric:operations"
    assert not any(":" in name for name in exported)
    found = [f"{r.get('alert') or r.get('record')}: {p}"
             for g in groups for r in g["rules"] for p in problems(r["expr"], exported, recorded)]
    assert not found, "\n".join(found)


def test_rules_are_well_formed(exported: dict[str, set[str]]):
    groups = _rules()
    recorded = recorded_series(groups, exported)
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names)), "alert names must be unique"
    for g in groups:
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and r["expr"].strip(), r
    for r in alerts:
        assert _DURATION.match(str(r["for"])), f"{r['alert']}: for: {r.get('for')!r}"
        templated = {m for text in r["annotations"].values() for m in re.findall(r"\$labels\.(\w+)", text)}
        carried = carried_labels(parse(r["expr"]), exported, recorded) | set(r["labels"])
        assert templated <= carried, f"{r['alert']}: annotations name {sorted(templated - carried)}, which its series lack"
        assert r["labels"]["severity"] in SEVERITIES, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_rules_cover_the_issue():
    groups = _rules()
    recording = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    # each alert's expression with the expressions of the recording rules it reads
    text = " ".join(
        " ".join([r["expr"], *(recording[n] for n in parse(r["expr"]).names if n in recording)])
        for g in groups for r in g["rules"] if "alert" in r
    )
    for series in (
        'router_gateway_requests_total{status=~"5.."}', "router_gateway_upstream_errors_total",
        "router_gateway_fallbacks_total", "router_gateway_escalations_total", "router_gateway_router_loaded",
        "router_model_loaded", 'router_gateway_reloads_total{result="failed"}', 'router_reloads_total{result="failed"}',
        "router_gateway_drift_psi_p_cheap_ok >= 0.25", "router_drift_psi_p_cheap_ok >= 0.25",
        "router_gateway_shadow_queue_depth", 'router_gateway_shadow_dropped_total{reason="queue_full"}',
        "router_gateway_decision_log_errors_total", "router_decision_log_errors_total",
        "router_gateway_decision_seconds_bucket", "router_decision_seconds_bucket", "router_errors_total",
    ):
        assert series in text, f"no alert reads {series}"


def test_every_alert_is_explained_in_the_docs():
    section = OPERATIONS.read_text(encoding="utf-8").split("## Dashboard and alerts", 1)
    assert len(section) == 2, "docs/operations.md has no 'Dashboard and alerts' section"
    text = section[1].split("\n## ", 1)[0]
    for name in (r["alert"] for g in _rules() for r in g["rules"] if "alert" in r):
        assert f"`{name}`" in text, f"{name} is not explained in docs/operations.md, Dashboard and alerts"
    for path in ("deploy/grafana/router-model.json", "deploy/prometheus/router-model-rules.yml"):
        assert path in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules():
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
