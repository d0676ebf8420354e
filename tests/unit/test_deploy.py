"""deploy/kubernetes/router.yaml agrees with router-serve: parsed, then checked against its flags.

The container's environment is fed to router-serve's own parser (`build_parser` reads the
environment for its defaults), so a renamed variable, a bad value or a port the server would
not listen on fails here, not in a cluster.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from router_model.batching import BatchingConfig
from router_model.service.cli import build_parser, config_from_args
from router_model.service.config import ServerConfig
from router_model.service.server import SERVICE_NAME

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "router.yaml"


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {MANIFEST.name}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    (c,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _port(container: dict[str, Any], name: str) -> int:
    (p,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(p)


@pytest.fixture()
def served(monkeypatch) -> ServerConfig:
    """The ServerConfig router-serve builds in this container (its env, its args)."""
    c = _container()
    for var in [v for v in os.environ if v.startswith("ROUTER_")]:
        monkeypatch.delenv(var)
    for name, value in _env(c).items():
        monkeypatch.setenv(name, value)
    assert c["command"] == ["router-serve"]
    return config_from_args(build_parser().parse_args(c.get("args", [])))


def test_every_variable_is_one_router_serve_reads():
    helps = " ".join(a.help or "" for a in build_parser()._actions)
    known = set(re.findall(r"\[env (ROUTER_[A-Z0-9_]+)\]", helps))
    assert len(known) > 20
    unknown = set(_env(_container())) - known
    assert not unknown, f"router-serve reads no such variable: {sorted(unknown)}"


def test_ports_and_binding_match_the_server(served: ServerConfig):
    c = _container()
    assert served.host == "0.0.0.0", "inside a pod the server must listen beyond loopback"
    assert _port(c, "grpc") == served.port
    assert _port(c, "metrics") == served.metrics_port
    ann = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == served.metrics_port and ann["prometheus.io/path"] == "/metrics"


def test_probes_use_grpc_health_on_the_served_port(served: ServerConfig):
    c = _container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(c[probe]) >= {"grpc"}, f"{probe} must be a gRPC health probe"
        assert c[probe]["grpc"]["port"] == served.port, probe
        assert c[probe]["grpc"].get("service", "") in ("", SERVICE_NAME), probe
    # ready means the router is serving, not only that the process is up
    assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    # the start-up probe waits for the model's load and warm-up before liveness takes over
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 30


def test_shutdown_has_time_to_drain(served: ServerConfig):
    spec = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + served.grace_seconds


def test_model_and_settings_as_configured(served: ServerConfig):
    c = _container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert served.model_dir is not None
    mount = next((m for p, m in mounts.items() if served.model_dir.is_relative_to(p)), None)
    assert mount is not None and mount["readOnly"], "the model directory comes from a read-only volume"
    assert served.batching == BatchingConfig(max_delay_ms=2.0, max_size=32, runners=2)
    assert served.threads == 1 and served.workers == 4 and served.watch_interval == 30
    # one batch runner per requested core
    assert float(c["resources"]["requests"]["cpu"]) == served.batching.runners


def test_services_select_the_pods_and_speak_grpc(served: ServerConfig):
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    c = _container()
    names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for name in ("router", "router-headless"):
        svc = _one("Service", name)
        assert svc["spec"]["selector"].items() <= labels.items()
        (port,) = svc["spec"]["ports"]
        target = port["targetPort"]
        assert (names[target] if isinstance(target, str) else target) == served.port
        assert port["appProtocol"] == "grpc"
    assert _one("Service", "router-headless")["spec"]["clusterIP"] == "None"


def test_autoscaler_budget_and_policy_point_at_the_deployment():
    dep = _one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = _one("NetworkPolicy")
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {"grpc", "metrics"} <= {p["name"] for p in _container()["ports"]}
