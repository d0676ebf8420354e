"""Every shell command in README.md, copied from it, works as written.

Commands that finish quickly run for real, in a working directory laid out as README assumes
(`artifacts/router` is a trained router, `artifacts/router-report/test.jsonl` its held-out rows,
`requests.jsonl` a log, `decisions.jsonl` an observation log). Servers and the public-data training
run are checked by their own argument parsers (their behaviour is tested elsewhere); the few lines
that cannot run here say why. A README command of an unknown kind fails the test.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
from conftest import EXAMPLE_LOG, REPO

README = REPO / "README.md"
# Servers, training and the commands that call an LLM API: checked by their own argument parsers.
PARSERS = {
    "router-train": "training.cli:build_parser",
    "router-serve": "router_model.service.cli:build_parser",
    "router-gateway": "router_model.gateway.cli:build_parser",
    "router-policy": "training.policy.cli:build_parser",
    "router-label": "router_model.labelling.cli:build_parser",
    "router-promote": "training.promote_cli:build_parser",
    "router-drift": "router_model.observe.drift_cli:build_parser",
}
# Subcommands with a parser of their own.
SUBCOMMAND_PARSERS = {
    ("router-label", "split"): "router_model.labelling.split_cli:build_parser",
}
NOT_RUN_HERE = {
    "bash": "the two setup/test scripts: CI runs scripts/test.sh itself; quickstart.sh trains on the public data (minutes)",
    "grpcurl": "grpcurl is not in the package registries; README shows the same call from Python beside it",
    "your_app.py": "illustrates pointing an application at the gateway",
}


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def _argv(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def _kind(argv: list[str]) -> str:
    if argv[0] == "bash":
        return "bash"
    if argv[0] == "grpcurl":
        return "grpcurl"
    if any(a.endswith("your_app.py") for a in argv):
        return "your_app.py"
    if argv[:3] == ["python", "-m", "router_model"] or argv[0] == "router-cost":
        return "run"
    if argv[0] in PARSERS:
        return "parse"
    return "unknown"


def test_every_readme_command_is_of_a_known_kind() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    unknown = [c for c in commands if _kind(_argv(c)) == "unknown"]
    assert unknown == [], "README commands this test does not know how to check"


@pytest.fixture(scope="module")
def workdir_template(tmp_path_factory, model_dir: Path) -> Path:
    from datetime import datetime, timedelta

    from router_model.observe.decision_log import DecisionLogWriter, decision_record, utc_timestamp
    from router_model.router import Router

    work = tmp_path_factory.mktemp("readme")
    (work / "artifacts").mkdir()
    (work / "artifacts" / "router").symlink_to(model_dir)
    (work / "artifacts" / "router-report").symlink_to(model_dir.parent / (model_dir.name + "-report"))
    shutil.copyfile(EXAMPLE_LOG, work / "requests.jsonl")
    router = Router.load(model_dir)
    prompts = ["Summarise: the meeting moved to Thursday.", "Prove that sqrt(2) is irrational.", "Translate 'hello' into Spanish."]
    start = datetime(2026, 11, 30, tzinfo=UTC)
    with DecisionLogWriter(work / "decisions.jsonl") as log:
        for i, p in enumerate(prompts * 4):  # an hour of observed traffic, one request every five minutes
            log.write(decision_record(router.predict(p), request_id=f"r{i}", prompt=p, cheap_model=router.cheap_model,
                                      strong_model=router.strong_model, ts=utc_timestamp(start + timedelta(minutes=5 * i))))
    return work


def _run_ids() -> list[str]:
    return [c for c in readme_commands() if _kind(_argv(c)) == "run"]


@pytest.mark.parametrize("line", _run_ids())
def test_readme_command_runs_as_written(line: str, workdir_template: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    shutil.copytree(workdir_template, work, symlinks=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    def files() -> set[tuple[str, int, int]]:
        return {(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in work.iterdir() if p.is_file()}

    before = files()
    res = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert res.stdout.strip() or files() != before, "the command printed nothing on stdout and wrote no file"


def _parser_of(argv: list[str]):
    """The parser of the command and the arguments it parses (a known subcommand has its own)."""
    target, rest = SUBCOMMAND_PARSERS.get(tuple(argv[:2])), argv[2:]
    if target is None:
        target, rest = PARSERS[argv[0]], argv[1:]
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(), rest


@pytest.mark.parametrize("line", [c for c in readme_commands() if _kind(_argv(c)) == "parse"])
def test_readme_server_and_training_commands_parse(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, rest = _parser_of(_argv(line))
    try:
        parser.parse_args(rest)
    except SystemExit as e:  # --help exits 0; a bad option exits 2
        assert e.code == 0, f"{line}: {capsys.readouterr().err}"


def test_lines_not_run_here_are_accounted_for() -> None:
    kinds = {_kind(_argv(c)) for c in readme_commands()} - {"run", "parse"}
    assert kinds <= set(NOT_RUN_HERE), kinds


def test_readme_gateway_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway.toml README shows is accepted as written by the gateway's config loader."""
    from router_model.gateway.config import load_config

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README shows no gateway.toml"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        (tmp_path / "gateway.toml").write_text(block, encoding="utf-8")
        config = load_config(tmp_path / "gateway.toml")
        assert config.mode == "observe" and config.shadow is not None and config.shadow.sample_rate < 1
