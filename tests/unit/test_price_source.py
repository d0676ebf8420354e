"""Prices from a maintained source: genai-prices by default, the packaged table and --prices /
--price-as as overrides, long-context tiers per request, and the source of every price recorded.

Figures are checked by hand: dollars = tokens x $/1M / 1M.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router_model import price_source
from router_model.artifact import ArtifactMetadata, read_metadata
from router_model.cost import ModelPrice, PriceTable, UnknownModelError
from router_model.cost_cli import main
from router_model.cost_projection import monthly_cost
from router_model.dollars import Usage, request_cost, usage_cost
from router_model.errors import ConfigError
from router_model.price_source import price_params

REPO = Path(__file__).resolve().parents[2]
PROFILE = ["--requests", "1000000", "--input-tokens", "1000", "--output-tokens", "1000"]  # 1B tokens each way


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def estimate(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["estimate", *PROFILE, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- the "done when" commands


def test_dated_snapshot_priced_at_its_own_list_price_without_a_prices_file(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate(capsys, "--cheap", "gpt-4o-mini", "--strong", "gpt-4o-2024-05-13")
    # 1B input x $5 + 1B output x $15 = $5,000 + $15,000; the mini: $150 + $600
    assert out["monthly_cost"] == {"gpt-4o-2024-05-13": 20_000.0, "gpt-4o-mini": 750.0}
    sources = out["prices"]["sources"]
    assert sources["gpt-4o-2024-05-13"].startswith("genai-prices 0.2.5") and "openai/gpt-4o-2024-05-13" in sources["gpt-4o-2024-05-13"]
    assert "genai-prices 0.2.5" in out["prices"]["order"]


def test_done_when_through_the_console_entry_point() -> None:
    """The same command as a user types it (python -m router_model.cost_cli), table output."""
    proc = subprocess.run([sys.executable, "-m", "router_model.cost_cli", "estimate", *PROFILE,
                           "--cheap", "gpt-4o-mini", "--strong", "gpt-4o-2024-05-13"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("gpt-4o-2024-05-13 "))
    assert row.split()[1:] == ["5.000", "5.000", "15.000", "$20,000.00"]  # no cached-input discount for this snapshot
    assert "gpt-4o-2024-05-13: genai-prices 0.2.5" in proc.stdout


def test_claude_pair_works_without_a_prices_file(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate(capsys, "--cheap", "claude-haiku-4-5", "--strong", "claude-sonnet-4-5", "--cheap-share", "0.5")
    # haiku $1 / $5: 1,000 + 5,000; sonnet $3 / $15: 3,000 + 15,000; half and half: 3,000 + 9,000
    assert out["monthly_cost"] == {"claude-sonnet-4-5": 18_000.0, "claude-haiku-4-5": 6_000.0}
    assert out["routed"] == 12_000.0
    assert "anthropic/claude-haiku-4-5" in out["prices"]["sources"]["claude-haiku-4-5"]


def test_late_2026_models_are_priced(table: PriceTable) -> None:
    for name in ("gpt-4.1-mini", "gpt-5-mini", "claude-haiku-4-5"):
        assert name in table and table.source_of(name).startswith("genai-prices")
    assert table.price("gpt-4o") == ModelPrice(2.50, 10.00, 1.25, 128000)  # the documented June 2026 figures agree
    assert table.price("gpt-4o-mini") == ModelPrice(0.15, 0.60, 0.075, 128000)


# ---------------------------------------------------------------- long-context tiers, per request


def test_long_context_tier_applies_per_request_in_one_numpy_call(table: PriceTable) -> None:
    sonnet = table.price("claude-sonnet-4-5")
    assert [t.above_input_tokens for t in sonnet.tiers] == [200_000]
    costs = request_cost(sonnet, np.array([250_000, 100_000, 200_000]), np.array([1_000, 1_000, 1_000]))
    np.testing.assert_allclose(costs, [
        (250_000 * 6.00 + 1_000 * 22.50) / 1e6,  # above 200K: the tier's $6 / $22.50 on all its tokens
        (100_000 * 3.00 + 1_000 * 15.00) / 1e6,  # the base $3 / $15
        (200_000 * 3.00 + 1_000 * 15.00) / 1e6,  # at the threshold: still the base ("above", as genai-prices)
    ])
    assert request_cost(sonnet, 250_000, 1_000) == pytest.approx(1.5225)  # scalars too


def test_tier_chosen_by_each_request_not_by_a_total(table: PriceTable) -> None:
    sonnet = table.price("claude-sonnet-4-5")
    # 10 requests of 100K: 1M input tokens in all, but each request is under 200K -> base price
    assert monthly_cost(sonnet, 10, 100_000, 0) == pytest.approx(10 * 100_000 * 3.00 / 1e6)
    assert monthly_cost(sonnet, 10, 250_000, 0) == pytest.approx(10 * 250_000 * 6.00 / 1e6)


def test_usage_cost_uses_the_tier_and_its_cached_price(table: PriceTable) -> None:
    # 250K prompt tokens, 100K of them cache reads: 150K x $6 + 100K x $0.60 + 1K x $22.50
    cost = usage_cost(table, "claude-sonnet-4-5", Usage(prompt_tokens=250_000, completion_tokens=1_000, cached_tokens=100_000))
    assert cost == pytest.approx((150_000 * 6.00 + 100_000 * 0.60 + 1_000 * 22.50) / 1e6)
    small = usage_cost(table, "claude-sonnet-4-5", Usage(prompt_tokens=100_000, completion_tokens=1_000, cached_tokens=0))
    assert small == pytest.approx((100_000 * 3.00 + 1_000 * 15.00) / 1e6)


# ---------------------------------------------------------------- precedence


def test_prices_file_beats_genai_prices(tmp_path: Path, table: PriceTable) -> None:
    path = write(tmp_path, {"models": {"gpt-4o-2024-05-13": {"input": 4.0, "output": 12.0},
                                       "claude-sonnet-4-5": {"output": 14.0}}})
    t = PriceTable.load(path)
    assert t.price("gpt-4o-2024-05-13") == ModelPrice(4.0, 12.0, 4.0, 128000)  # no cache discount, as before
    assert t.source_of("gpt-4o-2024-05-13") == f"--prices {path}"
    sonnet = t.price("claude-sonnet-4-5")  # field by field over genai-prices' price; a price given drops its tiers
    assert (sonnet.input, sonnet.output, sonnet.cached_input, sonnet.tiers) == (3.0, 14.0, 0.3, ())
    assert "over genai-prices" in t.source_of("claude-sonnet-4-5")


def test_price_as_maps_a_private_name_and_beats_genai_prices(table: PriceTable) -> None:
    assert table.price("gpt-4-1106-preview").input == 10.0  # genai-prices: gpt-4-turbo's $10 / $30
    mapped = PriceTable.load(price_as={"gpt-4-1106-preview": "gpt-4o", "my-ft": "gpt-4o-mini"})
    assert mapped.price("gpt-4-1106-preview") == table.price("gpt-4o")  # the explicit mapping wins, not refused
    assert mapped.price("my-ft") == table.price("gpt-4o-mini")
    assert mapped.source_of("my-ft").startswith("--price-as my-ft=gpt-4o-mini: genai-prices")


def test_price_as_of_a_name_in_a_prices_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"my-ft": {"input": 0.3, "output": 1.2}}})
    with pytest.raises(ConfigError, match="already has a price of its own"):
        PriceTable.load(path, price_as={"my-ft": "gpt-4o"})


def test_packaged_table_prices_what_genai_prices_lacks(table: PriceTable) -> None:
    assert table.price("meta-llama-3.1-70b-instruct").input == 0.88
    assert table.source_of("meta-llama-3.1-70b-instruct") == "packaged router_model/prices.json (as of 2026-06-01)"


def test_missing_genai_prices_falls_back_to_the_packaged_table(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # import genai_prices -> ImportError
    monkeypatch.setattr(price_source, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="router_model.price_source"):
        t = PriceTable.load()
    assert [r.getMessage() for r in caplog.records if "genai-prices is not installed" in r.getMessage()]
    assert t.maintained is None and "gpt-4o-2024-05-13" not in t
    assert t.price("gpt-4o") == ModelPrice(2.50, 10.00, 1.25, 128000) and t.source_of("gpt-4o").startswith("packaged")


# ---------------------------------------------------------------- unpriced names


def test_unknown_name_is_refused_naming_the_fix(table: PriceTable, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownModelError) as err:
        table.price("acme-internal-llm")
    text = str(err.value)
    assert "--prices" in text and "--price-as 'acme-internal-llm=gpt-4o'" in text
    assert len(text) < 600  # thousands of known names: a count and the closest, not the list
    with pytest.raises(SystemExit) as exc:
        main(["estimate", *PROFILE, "--strong", "acme-internal-llm"])
    assert exc.value.code == 2 and "--price-as 'acme-internal-llm=gpt-4o'" in capsys.readouterr().err


# ---------------------------------------------------------------- the source, recorded


def test_provenance_names_source_and_version(table: PriceTable) -> None:
    t = table.with_price_as({"mistralai/Mixtral-8x7B-Instruct-v0.1": "gpt-4o-mini"})
    record = t.provenance(["mistralai/Mixtral-8x7B-Instruct-v0.1", "claude-sonnet-4-5"])
    assert record["maintained"] == "genai-prices 0.2.5 (bundled data)"
    models = record["models"]
    assert models["mistralai/Mixtral-8x7B-Instruct-v0.1"]["source"].startswith("--price-as ")
    assert models["mistralai/Mixtral-8x7B-Instruct-v0.1"]["input"] == 0.15
    assert models["claude-sonnet-4-5"]["tiers"][0]["above_input_tokens"] == 200_000
    params = price_params(record)
    assert params["prices.source"].startswith("--price-as") and "genai-prices 0.2.5" in params["prices.source"]
    assert params["prices.model.claude-sonnet-4-5"].startswith("genai-prices 0.2.5")


def test_artifact_records_prices_and_old_artifacts_still_load(toy_model_dir: Path, table: PriceTable) -> None:
    old = read_metadata(toy_model_dir)  # written without a prices record
    assert old.prices == {} and "prices" not in old.to_dict()
    record = table.provenance([old.cheap_model, old.strong_model])
    new = old.replace(prices=record)
    again = ArtifactMetadata.from_dict(json.loads(json.dumps(new.to_dict())))
    assert again.prices == record and again.prices["maintained"].startswith("genai-prices 0.2.5")
