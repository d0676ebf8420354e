"""`router-promote`'s comparison table (issue 25, item 9): every cell stands apart from its neighbours."""

from __future__ import annotations

import pytest

promote = pytest.importorskip("training.promote")


def _score(version: str, goal: str) -> promote.ModelScore:
    return promote.ModelScore(
        version=version, artifact_version=f"a{version}", threshold=0.5, apgr=0.61, cpt50=0.4, cpt80=0.7, ece=0.02,
        quality=0.9, quality_vs_strong=0.96, strong_share=0.3, cost_saved=0.55, cost_per_request=0.001, goal=goal,
        goal_holds=True, rows_seen_in_training=0, overlap_allowance=0,
    )


@pytest.mark.parametrize("goal", ["quality_floor=0.95", "max_cost_per_request=0.00125"])
def test_the_promote_table_never_glues_two_columns(goal):
    result = promote.PromotionResult(True, "promote", [], candidate=_score("2", goal), champion=_score("1", goal))
    table = promote.format_table(result, None)
    assert goal + goal not in table
    [row] = [line for line in table.splitlines() if line.startswith("goal ") and "holds" not in line]
    assert row.split() == ["goal", goal, goal]
    header = table.splitlines()[0]
    assert header.split() == ["champion", "v1", "candidate", "v2"]
    lines = [line for line in table.splitlines() if line and not line.startswith(("PROMOTED", "  -"))]
    assert len({len(line.rstrip()) for line in lines}) == 1  # the columns line up
