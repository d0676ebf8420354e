"""What README's commands write in the checkout (models, labels, eval logs, decision logs, the MLflow
store) is git-ignored: labels and logs hold prompts, and a model directory is tens of MB."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# Options of README's commands whose value is a file or directory a command writes or a log of prompts.
PATH_OPTIONS = {"--out", "--output", "--decision-log", "--log", "--requests", "--eval-log", "--eval-out", "--train-out",
                "--model-dir"}
# Made by commands without naming them: the quickstart's report, the label sidecar, MLflow's store.
IMPLIED = ["artifacts/router/model.onnx", "artifacts/router-report/test.jsonl", "models/router-report/test.jsonl",
           "labels.ungraded.jsonl", "shadow-labels.ungraded.jsonl", "mlflow.db", "mlflow.db-journal",
           "mlruns/1/abc/artifacts/model/metadata.json", ".cache/router-model/embeddings.sqlite", ".venv/bin/python",
           "train.jsonl"]
KEPT = ["README.md", "router_model/prices.json", "training/policy/default.yaml", "data/README.md", "docs/operations.md"]


def readme_paths() -> set[str]:
    text = README.read_text(encoding="utf-8")
    paths: set[str] = set()
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            paths |= {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in PATH_OPTIONS}
    for block in re.findall(r"```toml\n(.*?)```", text, flags=re.S):
        paths |= set(re.findall(r'^out\s*=\s*"([^"]+)"', block, flags=re.M))
    # A directory (no suffix) stands for the files in it.
    return {p if Path(p).suffix else f"{p}/metadata.json" for p in paths if not p.startswith(("/", "models:/", "http"))}


def _ignored(paths: list[str]) -> set[str]:
    res = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"], input="\n".join(paths) + "\n",
                         capture_output=True, text=True, timeout=60)
    assert res.returncode in (0, 1), res.stderr
    return set(res.stdout.split())


@pytest.fixture(scope="module", autouse=True)
def _git_checkout() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")


def test_readme_commands_name_the_files_checked() -> None:
    paths = readme_paths()
    for expected in ("labels.jsonl", "shadow-labels.jsonl", "eval.jsonl", "decisions.jsonl", "models/router/metadata.json",
                     "artifacts/policy/metadata.json"):
        assert expected in paths, sorted(paths)


def test_what_readme_commands_write_is_ignored() -> None:
    paths = sorted(readme_paths() | set(IMPLIED))
    missing = [p for p in paths if p not in _ignored(paths)]
    assert missing == [], f"written by README's commands but not in .gitignore: {missing}"


def test_the_project_files_are_not_ignored() -> None:
    assert _ignored(KEPT) == set()
