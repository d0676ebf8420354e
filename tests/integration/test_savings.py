"""`router-savings` (router_model.offline.savings, savings_cli) on a trained router: the report's numbers hang together
and match router_model.cost. The arithmetic on synthetic scores is tests/unit/test_savings.py."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_LOG

from router_model.cost import PriceTable
from router_model.cost_projection import monthly_cost, routed_monthly_cost
from router_model.offline.log import read_logs
from router_model.offline.savings import DEFAULT_SHARES, compute_report
from router_model.offline.savings_cli import main

VOLUME = 250_000


@pytest.fixture(scope="module")
def report_json(model_dir) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--model-dir", str(model_dir), "--log", str(EXAMPLE_LOG), "--requests-per-month", str(VOLUME), "--json"])
    assert code == 0
    return json.loads(buf.getvalue())


def _by_share(rep: dict, share: float) -> dict:
    rows = [g for g in rep["grid"] if math.isclose(g["strong_share"], share, abs_tol=1e-9)]
    assert rows, f"no grid row at strong share {share}"
    return rows[0]


# ---------------------------------------------------------------- the CLI on a trained router


def test_table_is_printed(model_dir, capsys, tmp_path) -> None:
    png = tmp_path / "plots" / "savings.png"
    code = main(["--model-dir", str(model_dir), "--log", str(EXAMPLE_LOG), "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Savings report" in out and "always strong" in out and "always cheap" in out
    assert "router at its threshold" in out
    assert "q/strong" in out and "saved/mo" in out and "random" in out and "oracle" in out
    grid_lines = [ln for ln in out.splitlines() if "%|" in ln]
    assert len(grid_lines) >= len(DEFAULT_SHARES)
    assert sum(ln.startswith("*") for ln in grid_lines) == 1  # the chosen threshold is marked once
    assert "1,000,000 requests/month" in out  # default volume
    # The fixture router was trained on this very log: the report must say so.
    assert "WARNING: this log is (part of) the data the router was trained on" in out
    assert "held-out" in out
    assert "rules (not applied above)" in out
    assert f"plot: {png}" in out
    data = png.read_bytes()
    assert len(data) > 5_000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_shares_and_savings_are_consistent(report_json) -> None:
    rep = report_json
    assert rep["requests_per_month"] == VOLUME
    assert rep["trained_on_this_log"] is True
    assert rep["n"] == rep["rows_used"] == 40
    a_s, a_c = rep["always_strong"], rep["always_cheap"]
    assert a_s["saved_vs_strong"] == pytest.approx(0.0, abs=1e-6)
    assert a_c["saved_vs_strong"] == pytest.approx(a_s["monthly_cost"] - a_c["monthly_cost"], abs=1e-5)
    shares = [g["strong_share"] for g in rep["grid"]]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    assert {round(x, 6) for x in DEFAULT_SHARES} <= {round(x, 6) for x in shares}
    for g in rep["grid"]:
        for name in ("router", "random", "oracle"):
            pt = g[name]
            assert pt["cheap_share"] + pt["strong_share"] == pytest.approx(1.0)
            assert pt["saved_vs_strong"] == pytest.approx(a_s["monthly_cost"] - pt["monthly_cost"], abs=1e-5)
            assert pt["extra_vs_cheap"] == pytest.approx(pt["monthly_cost"] - a_c["monthly_cost"], abs=1e-5)
            assert pt["quality_vs_strong"] == pytest.approx(pt["pass_rate"] / a_s["pass_rate"], abs=1e-6)
            # Routing can't cost more than always-strong nor less than always-cheap.
            assert a_c["monthly_cost"] - 1e-6 <= pt["monthly_cost"] <= a_s["monthly_cost"] + 1e-6
        # The oracle is the best any routing can do at the same share.
        assert g["oracle"]["pass_rate"] >= g["router"]["pass_rate"] - 1e-9
        assert g["oracle"]["pass_rate"] >= g["random"]["pass_rate"] - 1e-9
    # At 0% strong every routing is always-cheap; at 100% always-strong.
    zero, full = _by_share(rep, 0.0), _by_share(rep, 1.0)
    for name in ("router", "random", "oracle"):
        assert zero[name]["saved_vs_strong"] == pytest.approx(a_c["saved_vs_strong"], abs=1e-5)
        assert zero[name]["pass_rate"] == pytest.approx(a_c["pass_rate"])
        assert full[name]["saved_vs_strong"] == pytest.approx(0.0, abs=1e-5)
        assert full[name]["pass_rate"] == pytest.approx(a_s["pass_rate"])
    # Monotone: more strong calls never save more (every strong call costs more than a cheap one),
    # and random routing's quality moves in a straight line toward always-strong.
    for name in ("router", "random", "oracle"):
        saved = [g[name]["saved_vs_strong"] for g in rep["grid"]]
        assert all(b <= a + 1e-6 for a, b in zip(saved, saved[1:])), name
    rq = [g["random"]["pass_rate"] for g in rep["grid"]]
    assert all(b >= a - 1e-12 for a, b in zip(rq, rq[1:]))


def test_chosen_point(report_json, model_dir) -> None:
    rep = report_json
    ch = rep["chosen"]
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert ch["threshold"] == pytest.approx(meta["threshold"])
    marked = [g for g in rep["grid"] if g["chosen"]]
    assert len(marked) == 1 and marked[0]["strong_share"] == pytest.approx(ch["router"]["strong_share"])
    assert ch["router"]["cheap_share"] + ch["router"]["strong_share"] == pytest.approx(1.0)
    assert ch["random"]["strong_share"] == pytest.approx(ch["router"]["strong_share"])
    assert ch["oracle"]["pass_rate"] >= ch["router"]["pass_rate"] - 1e-9
    # Rules are reported, not applied.
    assert rep["rules"]["applied_to_figures"] is False
    assert rep["rules"]["strong_rows"] == sum(rep["rules"]["by_reason"].values())


def test_dollars_match_router_model_cost(report_json) -> None:
    """Hand-check: the monthly figures equal router_model.cost on the log's mean token counts."""
    rep = report_json
    read = read_logs([EXAMPLE_LOG], models=(rep["cheap_model"], rep["strong_model"]))
    inp = np.mean([r.input_tokens if r.input_tokens is not None else math.ceil(len(r.full_text) / 4) for r in read.records])
    out = np.mean([r.output_tokens if r.output_tokens is not None else 250 for r in read.records])
    assert rep["mean_input_tokens"] == pytest.approx(inp, abs=1e-6)
    assert rep["mean_output_tokens"] == pytest.approx(out, abs=1e-6)
    table = PriceTable.load()
    strong, cheap = table.price("gpt-4o"), table.price("gpt-4o-mini")  # the example log's pair
    assert rep["always_strong"]["monthly_cost"] == pytest.approx(monthly_cost(strong, VOLUME, inp, out), abs=1e-4)
    assert rep["always_cheap"]["monthly_cost"] == pytest.approx(monthly_cost(cheap, VOLUME, inp, out), abs=1e-4)
    # Random routing at 30% strong: the same as router-cost's routed figure at a 70% cheap share.
    g = _by_share(rep, 0.3)
    routed = routed_monthly_cost(cheap, strong, VOLUME, inp, out, 0.0, 0.7)
    assert g["random"]["monthly_cost"] == pytest.approx(routed, abs=1e-4)
    assert g["random"]["saved_vs_strong"] == pytest.approx(monthly_cost(strong, VOLUME, inp, out) - routed, abs=1e-4)
    # One figure by hand: 250k requests x (inp x $2.50 + out x $10) / 1M.
    assert rep["always_strong"]["monthly_cost"] == pytest.approx(VOLUME * (inp * 2.5 + out * 10.0) / 1e6, abs=1e-4)


def test_bad_options(model_dir, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(model_dir), "--log", str(EXAMPLE_LOG), "--cheap", "gpt-4o-mini"])
    assert e.value.code == 2
    assert main(["--model-dir", str(model_dir), "--log", "no-such-log.jsonl"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_held_out_rows_written_by_training_get_no_warning_and_copied_rows_do(model_dir: Path, tmp_path: Path) -> None:
    """The report checks the router's prompt digest instead of always warning."""
    from router_model.offline.savings import score_log

    test_log = model_dir.parent / (model_dir.name + "-report") / "test.jsonl"
    assert test_log.is_file(), "router-train writes its held-out rows next to the report"
    held = compute_report(score_log(model_dir, [test_log]))
    assert held["trained_on_this_log"] is False and held["rows_seen_in_training"] == 0
    assert not any(n.startswith("WARNING") for n in held["notes"])
    copied = tmp_path / "copied.jsonl"  # a different file with rows from the training log
    copied.write_text("".join(EXAMPLE_LOG.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    rep = compute_report(score_log(model_dir, [copied]))
    assert rep["trained_on_this_log"] is True and 0 < rep["rows_seen_in_training"] <= 12
    assert rep["notes"][0].startswith(f"WARNING: {rep['rows_seen_in_training']} of 12 rows")


def test_unpriced_models_are_refused_by_name_unless_mapped(model_dir: Path, tmp_path: Path, capsys) -> None:
    rows = [json.loads(line) for line in EXAMPLE_LOG.read_text(encoding="utf-8").splitlines() if line.strip()]
    renamed = tmp_path / "renamed.jsonl"
    with renamed.open("w", encoding="utf-8") as f:
        for r in rows:
            oc = r["outcomes"]
            r["outcomes"] = {"my-ft": oc["gpt-4o-mini"], "my-big": oc["gpt-4o"]}
            f.write(json.dumps(r) + "\n")
    base = ["--model-dir", str(model_dir), "--log", str(renamed), "--cheap", "my-ft", "--strong", "my-big", "--json"]
    with pytest.raises(SystemExit) as e:
        main(base)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no price for model 'my-ft'" in err and "--price-as" in err
    assert main([*base, "--price-as", "my-ft=gpt-4o-mini", "--price-as", "my-big=gpt-4o"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["prices"]["cheap_per_1m"]["input"] == 0.15 and rep["prices"]["strong_per_1m"]["input"] == 2.5
    assert any("my-ft has no list price here; priced as gpt-4o-mini (--price-as)" in n for n in rep["notes"])
