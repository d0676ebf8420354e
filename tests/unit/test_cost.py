"""Price table and cost arithmetic: the published figures must come out exact to the cent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router_model.cost import ModelPrice, PriceFileError, PriceTable, UnknownModelError
from router_model.cost_cli import main
from router_model.cost_projection import blended_price, monthly_cost, routed_monthly_cost
from router_model.dollars import request_cost
from router_model.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def cents(x: float) -> float:
    return round(float(x), 2)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router_model.cost_cli", "estimate", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


# ---------------------------------------------------------------- the figures, via functions


def test_packaged_table_is_dated_and_sourced(table: PriceTable) -> None:
    assert table.version == 1 and table.as_of == "2026-06-01" and "OpenAI" in table.source
    assert table.price("gpt-4o") == ModelPrice(2.50, 10.00, 1.25, 128000)
    assert table.price("gpt-4o-mini") == ModelPrice(0.15, 0.60, 0.075, 128000)


def test_published_figures(table: PriceTable) -> None:
    strong, cheap = table.price("gpt-4o"), table.price("gpt-4o-mini")
    assert cents(monthly_cost(strong, 1_000_000, 500, 200)) == 3250.00
    assert cents(monthly_cost(cheap, 1_000_000, 500, 200)) == 195.00
    assert cents(monthly_cost(strong, 1_000_000, 800, 400)) == 6000.00
    # 1B input tokens a month
    assert cents(monthly_cost(strong, 1_000_000, 1000, 0)) == 2500.00
    assert cents(monthly_cost(cheap, 1_000_000, 1000, 0)) == 150.00
    # 100k requests/day x 30 days; the $4,200 in circulation is wrong
    assert cents(monthly_cost(strong, 100_000 * 30, 500, 200)) == 9750.00
    blended = blended_price(cheap.input, strong.input, 0.7)
    assert round(blended, 6) == 0.855
    assert round((blended / strong.input - 1) * 100, 1) == -65.8


def test_request_cost_scalars_arrays_and_cache(table: PriceTable) -> None:
    strong = table.price("gpt-4o")
    assert request_cost(strong, 500, 200) == pytest.approx(0.00325)
    costs = request_cost(strong, np.array([500, 1000]), np.array([200, 0]))
    np.testing.assert_allclose(costs, [0.00325, 0.0025])
    # half the input hits the cache at $1.25: 1M x 1000 tokens -> 1250 + 625
    assert cents(monthly_cost(strong, 1_000_000, 1000, 0, cached_share=0.5)) == 1875.00


def test_routed_cost(table: PriceTable) -> None:
    strong, cheap = table.price("gpt-4o"), table.price("gpt-4o-mini")
    routed = routed_monthly_cost(cheap, strong, 1_000_000, 500, 200, 0.0, 0.7)
    assert cents(routed) == cents(0.7 * 195 + 0.3 * 3250) == 1111.50
    assert cents(routed_monthly_cost(cheap, strong, 1_000_000, 500, 200, 0.0, 0.0)) == 3250.00
    assert cents(routed_monthly_cost(cheap, strong, 1_000_000, 500, 200, 0.0, 1.0)) == 195.00


@pytest.mark.parametrize(
    "call",
    [
        lambda p: request_cost(p, -1, 0),
        lambda p: request_cost(p, 1, 0, cached_share=1.5),
        lambda p: monthly_cost(p, -5, 1, 1),
        lambda p: monthly_cost(p, 1, float("nan"), 1),
        lambda p: blended_price(p.input, p.input, -0.1),
        lambda p: routed_monthly_cost(p, p, 1, 1, 1, 0.0, 2.0),
    ],
)
def test_bad_values_are_config_errors(table: PriceTable, call) -> None:
    with pytest.raises(ConfigError):
        call(table.price("gpt-4o"))


def test_model_price_validates_itself() -> None:
    with pytest.raises(ConfigError, match="output"):
        ModelPrice(1.0, -2.0, 0.5)
    with pytest.raises(ConfigError, match="context_window"):
        ModelPrice(1.0, 2.0, 0.5, context_window=0)


# ---------------------------------------------------------------- names, aliases, user files


def test_alias_resolution(table: PriceTable) -> None:
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")
    assert table.price(" GPT-4o-mini-2024-07-18 ") == table.price("gpt-4o-mini")
    assert "gpt-4o-2024-11-20" in table
    # billed higher than gpt-4o: genai-prices knows the snapshot; the packaged table alone does not alias it
    assert (table.price("gpt-4o-2024-05-13").input, table.price("gpt-4o-2024-05-13").output) == (5.0, 15.0)
    assert "gpt-4o-2024-05-13" not in PriceTable.load(maintained=False)


def test_unknown_model_lists_known_ones(table: PriceTable) -> None:
    with pytest.raises(UnknownModelError, match="gpt-4o, gpt-4o-mini") as err:
        PriceTable.load(maintained=False).price("claude-3-haiku")  # a short list: every name
    assert isinstance(err.value, ConfigError) and err.value.model == "claude-3-haiku"
    with pytest.raises(UnknownModelError, match=r"closest of [\d,]+ known models: gpt-4o-mini"):
        table.price("gpt-4o-minii")  # genai-prices' thousands: the closest few and the count


def test_unpriced_models_are_refused_unless_mapped_explicitly(table: PriceTable) -> None:
    exact = table.pricing_for_pair("gpt-4o-mini", "gpt-4o-2024-08-06")
    assert exact.strong == table.price("gpt-4o")
    with pytest.raises(UnknownModelError) as e:
        table.pricing_for_pair("my-small-ft", "gpt-4o")
    assert "my-small-ft" in str(e.value) and "--price-as 'my-small-ft=gpt-4o'" in str(e.value) and "--prices" in str(e.value)
    mapped = table.with_price_as({"my-small-ft": "gpt-4o-mini", "my-big": "gpt-4o-2024-08-06"})
    pair = mapped.pricing_for_pair("my-small-ft", "my-big")
    assert pair.cheap == table.price("gpt-4o-mini") and pair.strong == table.price("gpt-4o")
    assert PriceTable.load(price_as={"my-small-ft": "gpt-4o-mini"}).price("my-small-ft") == table.price("gpt-4o-mini")
    # a deliberate mapping of a name some source prices wins (the public pair prices gpt-4-1106-preview as gpt-4o)
    assert table.with_price_as({"gpt-4o": "gpt-4o-mini"}).price("gpt-4o") == table.price("gpt-4o-mini")
    with pytest.raises(UnknownModelError):
        table.with_price_as({"my-small-ft": "no-such-model"})


def write(tmp_path: Path, data: object, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "as_of": "2026-07-01",
        "models": {
            "gpt-4o": {"input": 2.00},  # field-level override; output/cached keep packaged values
            "my-small-ft": {"input": 0.30, "output": 1.20},  # cached_input defaults to input
        },
        "aliases": {"gpt-4o-2024-05-13": "gpt-4o", "ft:small:v2": "my-small-ft"},
    })
    t = PriceTable.load(path)
    assert t.price("gpt-4o") == ModelPrice(2.00, 10.00, 1.25, 128000)
    assert t.price("gpt-4o-mini") == ModelPrice(0.15, 0.60, 0.075, 128000)
    assert t.price("ft:small:v2") == ModelPrice(0.30, 1.20, 0.30)
    assert t.price("gpt-4o-2024-05-13").input == 2.00
    assert t.as_of == "2026-07-01" and t.files[-1] == str(path)


def test_user_price_beats_packaged_alias(tmp_path: Path) -> None:
    t = PriceTable.load(write(tmp_path, {"models": {"gpt-4o-2024-08-06": {"input": 5, "output": 15}}}))
    assert t.price("gpt-4o-2024-08-06").input == 5.0 and t.price("gpt-4o").input == 2.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        ({"modles": {}}, "unknown key(s) ['modles']"),
        ({"version": 2}, "version: unsupported version 2"),
        ({"currency": "EUR"}, "currency: only USD"),
        ({"models": {"x": {"input": 1}}}, "models.x: missing required field 'output'"),
        ({"models": {"x": {"input": "1.0", "output": 2}}}, "models.x.input: expected a non-negative number"),
        ({"models": {"x": {"input": -1, "output": 2}}}, "models.x.input: expected a finite non-negative"),
        ({"models": {"gpt-4o": {"ouput": 2}}}, "models.gpt-4o: unknown field(s) ['ouput']"),
        ({"models": {"x": {"input": 1, "output": 2, "context_window": 1.5}}}, "models.x.context_window"),
        ({"aliases": {"a": "nowhere"}}, "aliases.a: points to 'nowhere'"),
        ({"models": "gpt-4o"}, "models: expected an object"),
    ],
)
def test_bad_price_files_name_file_and_key(tmp_path: Path, content: object, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(PriceFileError) as err:
        PriceTable.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot read price file"):
        PriceTable.load(tmp_path / "nope.json")


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--requests", "1000000", "--input-tokens", "500", "--output-tokens", "200"],
         {"gpt-4o": 3250.0, "gpt-4o-mini": 195.0}),
        (["--requests", "1000000", "--input-tokens", "800", "--output-tokens", "400"], {"gpt-4o": 6000.0}),
        (["--requests", "1000000", "--input-tokens", "1000", "--output-tokens", "0"],
         {"gpt-4o": 2500.0, "gpt-4o-mini": 150.0}),
        (["--requests-per-day", "100000", "--input-tokens", "500", "--output-tokens", "200"], {"gpt-4o": 9750.0}),
    ],
)
def test_cli_json_figures(args: list[str], expected: dict[str, float]) -> None:
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object
    for model, dollars in expected.items():
        assert out["monthly_cost"][model] == dollars
    assert "routed" not in out


def test_cli_json_routed_and_blended() -> None:
    proc = run_cli("--requests", "1000000", "--input-tokens", "500", "--output-tokens", "200",
                   "--cheap-share", "0.7", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["requests"] == 1_000_000 and out["input_tokens"] == 500 and out["output_tokens"] == 200
    assert out["cached_share"] == 0.0 and out["cheap_share"] == 0.7
    assert out["routed"] == 1111.5 and out["savings"] == 2138.5
    assert out["savings_fraction"] == pytest.approx(0.658)
    assert out["blended_input_price_per_1m"] == 0.855
    assert round(out["blended_input_change_vs_strong"] * 100, 1) == -65.8


def test_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--requests", "1000000", "--input-tokens", "500", "--output-tokens", "200", "--cheap-share", "0.7"]) == 0
    text = capsys.readouterr().out
    for figure in ("$3,250.00", "$195.00", "$1,111.50", "$2,138.50", "$0.855 per 1M", "-65.8%", "2026-06-01"):
        assert figure in text


def test_cli_requests_per_day_is_30_days(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--requests-per-day", "100000", "--input-tokens", "500", "--output-tokens", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 3_000_000 and out["monthly_cost"]["gpt-4o"] == 9750.0


def test_cli_prices_file_and_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"models": {"my-small-ft": {"input": 0.30, "output": 1.20}}})
    argv = ["--requests", "1000000", "--input-tokens", "500", "--output-tokens", "200",
            "--cheap", "my-small-ft", "--strong", "gpt-4o-2024-08-06", "--prices", str(path), "--json"]
    assert main(["estimate", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["monthly_cost"] == {"gpt-4o-2024-08-06": 3250.0, "my-small-ft": 390.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests", "10", "--input-tokens", "-5", "--output-tokens", "1"], "--input-tokens: must be a non-negative"),
        (["--requests", "10", "--input-tokens", "5", "--output-tokens", "-1"], "--output-tokens: must be a non-negative"),
        (["--requests", "-10", "--input-tokens", "5", "--output-tokens", "1"], "--requests: must be a non-negative"),
        (["--requests", "10", "--input-tokens", "5", "--output-tokens", "1", "--cheap-share", "70"], "within [0, 1]"),
        (["--requests", "10", "--input-tokens", "5", "--output-tokens", "1", "--cached-share", "-0.1"], "within [0, 1]"),
        (["--requests", "10", "--input-tokens", "x", "--output-tokens", "1"], "expected a number"),
        (["--requests", "10", "--requests-per-day", "1", "--input-tokens", "5", "--output-tokens", "1"], "not allowed"),
        (["--input-tokens", "5", "--output-tokens", "1"], "one of the arguments"),
        (["--requests", "10", "--input-tokens", "5", "--output-tokens", "1", "--strong", "my-private-ft"], "known models"),
    ],
)
def test_cli_bad_options_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["estimate", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bad_price_file_exit_2_in_subprocess(tmp_path: Path) -> None:
    path = write(tmp_path, {"models": {"gpt-4o": {"input": "cheap"}}})
    proc = run_cli("--requests", "1", "--input-tokens", "1", "--output-tokens", "1", "--prices", str(path))
    assert proc.returncode == 2
    assert f"{path}" in proc.stderr and "models.gpt-4o.input" in proc.stderr


def test_cost_tools_are_one_command_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # a subcommand is required
    assert main(["estimate-all"]) == 2
    assert "invalid choice: 'estimate-all'" in capsys.readouterr().err  # argparse names the bad subcommand
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("estimate", "savings", "observed"))

