"""Risk-controlled thresholds on real data: the empirical violation rate on public data, and the
goal, risk, method and certified floor a trained router carries into metadata.json, `info` and
GetModelInfo. The bounds on hand cases are tests/unit/test_guarantee.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from training.risk import METHOD_EXACT

REPO = Path(__file__).resolve().parents[2]


def test_small_benchmark_on_public_data(tmp_path: Path) -> None:
    """A few draws of benchmarks/savings_under_guarantee.py on routerbench (every rule, the cheap
    model's own answers): violations near the risk for every certified rule."""
    from conftest import require_shared

    require_shared("routerbench-subset/routerbench-subset.normalized.jsonl")
    require_shared("routerbench-subset/raw/routerbench_zs")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import savings_under_guarantee as bench

    # 800 of the file's 3,150 rows (a spread sample, whole prompts): a ~500-row pool for the 300-row logs,
    # ~300 to test on. Embedding the rows is nearly all of the cost (1,600 rows took 86 s cold, 800 take half).
    out = tmp_path / "savings.json"
    assert bench.main(["--data", "routerbench", "--sizes", "300", "--draws", "6", "--workers", "1", "--max-rows", "800",
                       "--no-n-model", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["data"]["routerbench"]["pool"] + res["data"]["routerbench"]["test"] <= 810
    r = res["data"]["routerbench"]["sizes"]["300"]
    assert set(r) >= set(bench.RULES) and r["draws"] == 6
    # 6 draws at a true rate <= 0.05: three or more violations would happen with probability 0.2%.
    for rule in ("clopper-pearson", "betting", "exact", "every-row", "route+escalate"):
        assert 1 - r[rule]["held"] <= 2 / 6 + 1e-9, (rule, r[rule])
    assert r["empirical"]["held"] <= r["betting"]["held"]  # no guarantee: it held less often (measured, 1 in 6 broke)
    assert r["clopper-pearson"]["cheap_share"] <= r["betting"]["cheap_share"] + 1e-9  # the sharper test on the same scores
    assert sum(r["route+escalate"]["families"].values()) == 6


def test_trained_artifact_states_the_guarantee(second_trained, tmp_path: Path) -> None:
    """A router trained on the 40 example rows with the default goal: nothing certifiable, so all
    strong, and every surface says so."""
    from router_model.router import Router
    from router_model.summary import metadata_summary

    trained, model_dir = second_trained, second_trained.model_dir
    meta = json.loads((model_dir / "metadata.json").read_text())
    g = meta["goal"]
    assert g["risk"] == 0.05 and g["method"] == METHOD_EXACT and g["certificate"] == "exact"
    assert g["certified"] is False and g["certified_floor"] == 1.0 and meta["threshold"] > 1.0
    rows = meta["data"]["split_rows"]
    # Every labelled row (the default), or train + validation, unless a class is too rare to cross-fit (then validation).
    assert g["n_labelled"] == {"all": sum(rows.values()), "oof": rows["train"] + rows["val"],
                               "validation": rows["val"]}[g["threshold_rows"]]
    assert "nothing cheap certified: all strong" in metadata_summary(trained.metadata, model_dir)
    # An artifact written before risk control (no new goal fields) still loads.
    old = tmp_path / "old-router"
    shutil.copytree(model_dir, old)
    for key in ("risk", "method", "certified", "certified_floor", "bound", "n_labelled", "n_needed", "threshold_rows",
                "certificate"):
        meta["goal"].pop(key)
    (old / "metadata.json").write_text(json.dumps(meta))
    r = Router.load(old)
    assert r.meta.goal.method == "empirical" and r.meta.goal.risk is None and r.meta.goal.certified_floor is None
    assert r.meta.goal.certificate == "none"


def test_get_model_info_states_the_guarantee(second_model_dir: Path) -> None:
    from service_helpers import channel, router_stub, serve

    from router_model.service.config import ServerConfig
    from router_model.service.gen.router.v1 import router_pb2 as pb

    with serve(ServerConfig(model_dir=second_model_dir, port=0)) as running, channel(running) as ch:
        info = router_stub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    # The method names the certificate (GetModelInfo has no separate field for it).
    assert (info.goal, info.goal_value, info.method) == ("quality_floor", pytest.approx(0.95), METHOD_EXACT)
    assert info.HasField("risk") and info.risk == pytest.approx(0.05)
    assert info.HasField("certified_floor") and info.certified_floor == 1.0 and info.certified is False
    assert info.n_labelled > 0
