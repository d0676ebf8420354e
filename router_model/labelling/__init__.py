"""From traffic to labels: grade answers with the team's rubric and append labelled-log rows.

Two paths share one grading code (`grading.grade_request`): shadow grading in the gateway
(`shadow.ShadowGrader`, fed after a response has been returned) and offline labelling of a
request file (`router-label`, `cli.py`). The rubric is programmatic checks (`rubric.py`) plus
an optional LLM judge (`judge.py`); rows go to a 0600 JSONL file through `writer.py` in the
labelled-log format of data/README.md, so `router-train --log labels.jsonl` trains on it as is.

Needs the `gateway` extra (httpx, jsonschema); nothing in the core package imports this one.
See docs/labelling.md.
"""
