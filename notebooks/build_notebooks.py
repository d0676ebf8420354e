"""Write the notebooks in this folder from their cell sources (notebook_cells.py; reviewed as code).

    python notebooks/build_notebooks.py          # rewrite the three .ipynb files (no outputs)
    python notebooks/build_notebooks.py --check  # exit 1 if a committed notebook differs from this script

Each notebook's first code cell finds the public data (../shared/data next to the repository, or
$ROUTER_SHARED_DATA) and sets DATA_OK. Without the data it prints why and every later code cell,
wrapped here in `if DATA_OK:`, does nothing: the notebook still runs top to bottom without an error.
CI executes them (tests/integration/test_notebooks.py); outputs are never committed.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from notebook_cells import CHOOSE_THRESHOLD, EXPLORE_LOG, TRAIN_AND_CALIBRATE  # the cell sources, beside this script

HERE = Path(__file__).resolve().parent


def setup_cell(needed: dict[str, str]) -> str:
    entries = "\n".join(f'    "{key}": DATA / "{rel}",' for key, rel in needed.items())
    return f'''\
# Locate the public labelled data (never copied into the repository; read by path).
import os
from pathlib import Path

import training  # this repository's package, installed editable

REPO = Path(training.__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROUTER_SHARED_DATA", REPO.parent / "shared" / "data"))
NEEDED = {{
{entries}
}}
MISSING = [str(p) for p in NEEDED.values() if not p.is_file()]
DATA_OK = not MISSING
if DATA_OK:
    print(f"public data: {{DATA}}")
else:
    print(
        "SKIPPED: this notebook needs the public labelled data, which is absent:\\n  "
        + "\\n  ".join(MISSING)
        + "\\nPut it in ../shared/data beside the repository, or set ROUTER_SHARED_DATA to its folder."
        + "\\nEvery later cell checks DATA_OK and does nothing."
    )'''


def _guarded(src: str) -> str:
    return "if DATA_OK:\n" + textwrap.indent(textwrap.dedent(src).strip("\n"), "    ")


def build(title: str, needed: dict[str, str], cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(new_markdown_cell(textwrap.dedent(title).strip()))
    nb.cells.append(new_code_cell(setup_cell(needed)))
    for kind, src in cells:
        if kind == "md":
            nb.cells.append(new_markdown_cell(textwrap.dedent(src).strip()))
        else:
            nb.cells.append(new_code_cell(_guarded(src)))
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives identical files
        cell["id"] = f"cell-{i:02d}"
    return nb


NOTEBOOKS = {
    "01_explore_log.ipynb": build(*EXPLORE_LOG),
    "02_train_and_calibrate.ipynb": build(*TRAIN_AND_CALIBRATE),
    "03_choose_threshold.ipynb": build(*CHOOSE_THRESHOLD),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a notebook on disk differs from this script")
    args = parser.parse_args(argv)
    stale = []
    for name, nb in NOTEBOOKS.items():
        nbformat.validate(nb)
        text = nbformat.writes(nb) + "\n"
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python notebooks/build_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
