"""router_model.offline.split: no group leaks across splits or folds, and growth keeps old rows in place."""

from __future__ import annotations

import numpy as np
import pytest

from router_model.offline.split import assign_splits, group_kfold, normalize_prompt, sample_groups


def keys(n_groups: int, reps: int = 3) -> list[str]:
    """Rows with repeated prompts: group g appears (g % reps) + 1 times."""
    return [f"prompt number {g}" for g in range(n_groups) for _ in range(g % reps + 1)]


def test_normalize_prompt() -> None:
    assert normalize_prompt("  What IS\t2+2?\n\n ") == "what is 2+2?"
    assert normalize_prompt("ﬁle Ｘ") == "file x"  # NFKC: ligature and full-width letters
    assert normalize_prompt("a\u00a0 b") == "a b"


def test_identical_prompts_never_straddle() -> None:
    raw = ["What is 2+2?", "what is  2+2?", "WHAT IS 2+2? "] * 50 + [f"q{i}" for i in range(500)]
    groups = [normalize_prompt(t) for t in raw]
    splits = assign_splits(groups)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        by_group.setdefault(g, set()).add(str(s))
    assert all(len(v) == 1 for v in by_group.values())
    assert set(splits) <= {"train", "val", "test"}


def test_fractions_roughly_right() -> None:
    splits = assign_splits([f"k{i}" for i in range(20000)], (0.7, 0.15, 0.15), seed=3)
    frac = {name: float(np.mean(splits == name)) for name in ("train", "val", "test")}
    assert frac["train"] == pytest.approx(0.7, abs=0.015)
    assert frac["val"] == pytest.approx(0.15, abs=0.015)
    assert frac["test"] == pytest.approx(0.15, abs=0.015)
    assert set(assign_splits([f"k{i}" for i in range(100)], (1.0, 0.0, 0.0))) == {"train"}


def test_stable_when_rows_are_appended_and_seed_matters() -> None:
    old = keys(300)
    grown = old + keys(600)[len(old):] + ["brand new prompt"] * 4
    a, b = assign_splits(old), assign_splits(grown)
    assert np.array_equal(a, b[: len(old)])
    assert not np.array_equal(a, assign_splits(old, seed=1))


def test_bad_fractions() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a"], (0.5, 0.2, 0.2))
    with pytest.raises(ValueError):
        assign_splits(["a"], (1.2, -0.1, -0.1))


def test_group_kfold_no_leak_covers_all_and_balanced() -> None:
    g = keys(400)
    folds = group_kfold(g, k=5, seed=0)
    assert len(folds) == 5
    n = len(g)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(n))  # every row tested exactly once
    arr = np.array(g)
    seen: dict[str, int] = {}
    for f, (tr, te) in enumerate(folds):
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n
        assert not set(arr[tr]) & set(arr[te])  # no group on both sides
        for key in set(arr[te]):
            assert seen.setdefault(key, f) == f  # no group in two folds
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 3  # largest group has 3 rows
    again = group_kfold(g, k=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_group_kfold_errors() -> None:
    with pytest.raises(ValueError):
        group_kfold(["a", "b"], k=1)
    with pytest.raises(ValueError, match="distinct groups"):
        group_kfold(["a", "a", "b"], k=3)


def test_sample_groups_is_deterministic_whole_groups_and_spread_over_splits() -> None:
    k = keys(3000)
    got = sample_groups(k, 1000, seed=0)
    assert np.array_equal(got, sample_groups(k, 1000, seed=0)) and np.all(np.diff(got) > 0)
    assert 1000 <= len(got) < 1003  # stops after the group that reaches n (groups here have <= 3 rows)
    chosen = {k[i] for i in got}
    assert sum(1 for key in k if key in chosen) == len(got)  # every row of a chosen group, none of the others
    # salted apart from the split: the sample keeps roughly the 70/15/15 shares, not one split only
    split = assign_splits(k, seed=0)[got]
    shares = [float(np.mean(split == name)) for name in ("train", "val", "test")]
    assert abs(shares[0] - 0.7) < 0.06 and min(shares[1:]) > 0.09
    assert not np.array_equal(got, sample_groups(k, 1000, seed=1))
    with pytest.raises(ValueError, match=">= 1"):
        sample_groups(k, 0)
