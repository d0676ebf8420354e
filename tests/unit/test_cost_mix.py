"""`router-cost estimate --mix`: the monthly cost of a routed mix of N models, checked by hand.

Prices (router_model/prices.json, USD per 1M tokens, input / cached input / output):
gpt-4o 2.50 / 1.25 / 10.00, gpt-4o-mini 0.15 / 0.075 / 0.60, gemini-1.5-flash-002 0.075 / - / 0.30,
gpt-3.5-turbo-1106 1.00 / - / 2.00. Traffic: 1,000,000 requests of 500 input + 200 output tokens,
i.e. 500M input and 200M output tokens a month, so each model alone costs
500 * input + 200 * output dollars: gpt-4o 1,250 + 2,000 = 3,250; gpt-4o-mini 75 + 120 = 195;
gemini-1.5-flash-002 37.5 + 60 = 97.5; gpt-3.5-turbo-1106 500 + 400 = 900.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from router_model.cost import PriceTable
from router_model.cost_cli import main
from router_model.cost_projection import MixCost, check_mix, mix_monthly_cost, parse_mix
from router_model.errors import ConfigError

PROFILE = ["--requests", "1000000", "--input-tokens", "500", "--output-tokens", "200"]


def estimate_json(*args: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["estimate", *PROFILE, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_two_model_mix_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate_json("--mix", "gpt-4o=0.3,gpt-4o-mini=0.7", capsys=capsys)
    assert out["mix"] == {"gpt-4o": 0.3, "gpt-4o-mini": 0.7}
    assert out["monthly_cost"] == {"gpt-4o": 3250.0, "gpt-4o-mini": 195.0}
    # 0.3 * 3,250 = 975; 0.7 * 195 = 136.5; together 1,111.5
    assert out["routed_by_model"] == {"gpt-4o": 975.0, "gpt-4o-mini": 136.5}
    assert out["routed"] == 1111.5
    assert out["priciest_model"] == "gpt-4o"
    assert out["savings"] == 2138.5  # 3,250 - 1,111.5
    assert out["savings_fraction"] == 0.658  # 2,138.5 / 3,250, rounded to 6 digits
    assert out["requests"] == 1_000_000 and out["prices"]["as_of"] == "2026-06-01"
    # the same traffic as the pair form with --cheap-share 0.7: the same routed figure
    pair = estimate_json("--cheap-share", "0.7", capsys=capsys)
    assert pair["routed"] == out["routed"] and pair["savings"] == out["savings"]


def test_three_model_mix_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate_json("--mix", "gpt-4o=0.2,gemini-1.5-flash-002=0.5,gpt-3.5-turbo-1106=0.3", capsys=capsys)
    assert out["monthly_cost"] == {"gpt-4o": 3250.0, "gemini-1.5-flash-002": 97.5, "gpt-3.5-turbo-1106": 900.0}
    # 0.2 * 3,250 = 650; 0.5 * 97.5 = 48.75; 0.3 * 900 = 270; together 968.75
    assert out["routed_by_model"] == {"gpt-4o": 650.0, "gemini-1.5-flash-002": 48.75, "gpt-3.5-turbo-1106": 270.0}
    assert out["routed"] == 968.75
    assert out["savings"] == 2281.25 and out["savings_fraction"] == round(2281.25 / 3250, 6)


def test_the_priciest_model_need_not_come_first(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate_json("--mix", "gpt-4o-mini=0.5,gpt-3.5-turbo-1106=0.5", capsys=capsys)
    # 0.5 * 195 + 0.5 * 900 = 547.5; against gpt-3.5-turbo-1106 alone (900): 352.5
    assert out["priciest_model"] == "gpt-3.5-turbo-1106"
    assert out["routed"] == 547.5 and out["savings"] == 352.5


def test_cached_share_uses_each_models_cached_price(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate_json("--mix", "gpt-4o=0.3,gpt-4o-mini=0.7", "--cached-share", "0.5", capsys=capsys)
    # gpt-4o: 250M * 2.50 + 250M * 1.25 + 200M * 10 = 625 + 312.5 + 2,000 = 2,937.5
    # gpt-4o-mini: 250M * 0.15 + 250M * 0.075 + 200M * 0.60 = 37.5 + 18.75 + 120 = 176.25
    assert out["monthly_cost"] == {"gpt-4o": 2937.5, "gpt-4o-mini": 176.25}
    assert out["routed"] == 1004.625  # 0.3 * 2,937.5 + 0.7 * 176.25 = 881.25 + 123.375
    assert out["savings"] == 1932.875


def test_requests_per_day_and_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--requests-per-day", "100000", "--input-tokens", "500", "--output-tokens", "200",
                 "--mix", "gpt-4o-2024-08-06=0.3,gpt-4o-mini=0.7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # 3,000,000 requests a month: three times the 1M figures; a dated alias is priced as gpt-4o
    assert out["requests"] == 3_000_000 and out["requests_per_day"] == 100_000
    assert out["monthly_cost"] == {"gpt-4o-2024-08-06": 9750.0, "gpt-4o-mini": 585.0}
    assert out["routed"] == 3334.5 and out["priciest_model"] == "gpt-4o-2024-08-06"


def test_mix_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", *PROFILE, "--mix", "gpt-4o=0.3,gpt-4o-mini=0.7"]) == 0
    text = capsys.readouterr().out
    for figure in ("$3,250.00", "$195.00", "$975.00", "$136.50", "$1,111.50", "$2,138.50", "65.8%", "30.0%", "70.0%",
                   "always gpt-4o", "2026-06-01"):
        assert figure in text, figure


def test_mix_json_via_the_installed_command() -> None:
    exe = shutil.which("router-cost", path=str(Path(sys.executable).parent)) or shutil.which("router-cost")
    assert exe, "the router-cost console script is not installed"
    proc = subprocess.run([exe, "estimate", *PROFILE, "--mix", "gpt-4o=0.3,gpt-4o-mini=0.7", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["routed"] == 1111.5 and out["savings"] == 2138.5
    assert out["monthly_cost"] == {"gpt-4o": 3250.0, "gpt-4o-mini": 195.0}
    bad = subprocess.run([exe, "estimate", *PROFILE, "--mix", "gpt-4o=0.3,gpt-4o-mini=0.6", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "sum to 0.9" in bad.stderr and bad.stdout == ""


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ("gpt-4o=0.3,gpt-4o-mini=0.6", "the shares sum to 0.9, not 1"),
        ("gpt-4o=0.3,gpt-4o-mini=0.7000011", "not 1 (within 1e-06)"),
        ("gpt-4o=0.3,no-such-model=0.7", "no price for model 'no-such-model'"),
        ("gpt-4o", "'gpt-4o': expected MODEL=SHARE"),
        ("gpt-4o=0.3,,gpt-4o-mini=0.7", "'': expected MODEL=SHARE"),
        ("gpt-4o=abc,gpt-4o-mini=0.7", "'gpt-4o=abc': the share 'abc' is not a number"),
        ("gpt-4o=1.5,gpt-4o-mini=-0.5", "gpt-4o=1.5: a share must be a fraction within [0, 1]"),
        ("gpt-4o=30,gpt-4o-mini=70", "gpt-4o=30.0: a share must be a fraction"),
        ("gpt-4o=0.5,GPT-4o=0.5", "model 'GPT-4o' is named twice"),
    ],
)
def test_bad_mix_exits_2_naming_the_item(mix: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["estimate", *PROFILE, "--mix", mix])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cheap-share", "0.7"], "argument --cheap-share: not allowed with argument --mix"),
        (["--cheap", "gpt-4o-mini"], "--mix names its own models"),
        (["--strong", "gpt-4o"], "--mix names its own models"),
    ],
)
def test_mix_excludes_the_pair_options(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["estimate", *PROFILE, "--mix", "gpt-4o=0.3,gpt-4o-mini=0.7", *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_pair_form_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    out = estimate_json("--cheap", "gpt-4o-mini", "--strong", "gpt-4o", "--cheap-share", "0.7", capsys=capsys)
    assert out["monthly_cost"] == {"gpt-4o": 3250.0, "gpt-4o-mini": 195.0} and out["routed"] == 1111.5
    assert "mix" not in out


def test_mix_arithmetic_in_cost_module() -> None:
    table = PriceTable.load()
    got = mix_monthly_cost(table, {"gpt-4o": 0.3, "gpt-4o-mini": 0.7}, 1_000_000, 500, 200)
    assert isinstance(got, MixCost)
    assert round(got.routed, 6) == 1111.5 and got.alone == {"gpt-4o": 3250.0, "gpt-4o-mini": 195.0}
    assert got.priciest == "gpt-4o" and round(got.savings, 6) == 2138.5
    # float noise of hand-typed thirds is within the tolerance; three 0.333s are not
    check_mix(parse_mix("gpt-4o=0.3333333,gpt-4o-mini=0.3333333,gpt-3.5-turbo-1106=0.3333334"))
    check_mix({"a": 0.1, "b": 0.2, "c": 0.7})  # 0.1 + 0.2 != 0.3 exactly
    with pytest.raises(ConfigError, match="sum to 0.999"):
        parse_mix("gpt-4o=0.333,gpt-4o-mini=0.333,gpt-3.5-turbo-1106=0.333")
    with pytest.raises(ConfigError, match="at least one"):
        check_mix({})
    with pytest.raises(ConfigError, match="no price for model 'nope'"):
        mix_monthly_cost(table, {"gpt-4o": 0.5, "nope": 0.5}, 1, 1, 1)
