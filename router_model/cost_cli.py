"""`router-cost`: the cost tools, one command with three subcommands.

* `router-cost estimate`: what a traffic profile costs a month on each model, and with routing
  (back-of-the-envelope figures that can be checked: every price comes from genai-prices or the
  versioned price table, each model's source shown in the output, and every assumption is an option);
* `router-cost savings`: what a trained router saves on a labelled log (router_model.offline.savings);
* `router-cost observed`: what routing would have saved on the traffic an observing service or
  gateway logged (router_model.observe.report).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from router_model.cli_args import add_price_options, non_negative_number
from router_model.cost import DEFAULT_CHEAP, DEFAULT_STRONG, PriceTable
from router_model.cost_projection import (
    DAYS_PER_MONTH,
    MIX_TOLERANCE,
    blended_price,
    mix_monthly_cost,
    monthly_cost,
    parse_mix,
    routed_monthly_cost,
)
from router_model.errors import ConfigError
from router_model.observe import report_cli
from router_model.offline import savings_cli

_DIGITS = 6  # JSON rounding: drops float noise (1111.5000000000002) yet keeps sub-cent figures


def _number(text: str) -> int | float:
    """A finite non-negative number; int when integral so JSON echoes 1000000, not 1000000.0."""
    value = non_negative_number(text)
    return int(value) if value.is_integer() else value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be within [0, 1] (a fraction, not a percent), got {text!r}")
    return value


def _mix(text: str) -> dict[str, float]:
    """`--mix MODEL=SHARE[,...]`: cost.parse_mix, its errors as argparse's (exit 2 naming the item)."""
    try:
        return parse_mix(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


ESTIMATE_HELP = "monthly cost of a traffic profile on each model and with routing"


def estimate_parser() -> argparse.ArgumentParser:
    """`router-cost estimate`'s own parser (exposed so docs and tests can render the help)."""
    parser = argparse.ArgumentParser(prog="router-cost estimate", **ESTIMATE_TEXT)  # type: ignore[arg-type]
    add_estimate_arguments(parser)
    return parser


ESTIMATE_TEXT = dict(
        description=(
            "Monthly LLM cost of a traffic profile on the cheap and the strong model, and with routing;\n"
            "or, with --mix, of a routed mix of N models against each of them alone.\n"
            "Prices are USD per 1M tokens from genai-prices (maintained, offline price data), then the\n"
            "packaged, dated table (router_model/prices.json) for names it lacks; --prices FILE and\n"
            "--price-as NAME=PRICED override both. A long-context price applies when one request's input\n"
            f"exceeds its threshold. A month is {DAYS_PER_MONTH} days."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example:\n"
            "  router-cost estimate --requests 1000000 --input-tokens 500 --output-tokens 200 --cheap-share 0.7\n"
            "  -> gpt-4o $3,250.00, gpt-4o-mini $195.00, routed $1,111.50, blended input $0.855/1M (-65.8%)\n"
            "  router-cost estimate --requests 1000000 --input-tokens 500 --output-tokens 200 \\\n"
            "      --mix gpt-4o=0.2,gemini-1.5-flash-002=0.5,gpt-3.5-turbo-1106=0.3\n"
            "  -> routed $968.75, saving $2,281.25 (70.2%) against gpt-4o alone ($3,250.00)\n"
            "exit status: 0 ok, 2 bad option or price file"
        ),
)


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `router-cost estimate`."""
    volume = parser.add_mutually_exclusive_group(required=True)
    volume.add_argument("--requests", type=_number, metavar="N", help="requests (LLM calls) per month")
    volume.add_argument(
        "--requests-per-day",
        type=_number,
        metavar="N",
        help=f"requests per day instead of --requests; multiplied by {DAYS_PER_MONTH} days for the month",
    )
    parser.add_argument(
        "--input-tokens", type=_number, required=True, metavar="I",
        help="average input (prompt) tokens per request, system prompt and history included",
    )
    parser.add_argument(
        "--output-tokens", type=_number, required=True, metavar="O",
        help="average output (completion) tokens per request",
    )
    parser.add_argument(
        "--cached-share", type=_fraction, default=0.0, metavar="C",
        help="fraction of input tokens billed at the cached-input price (prompt-cache hits), 0..1; default 0",
    )
    routing = parser.add_mutually_exclusive_group()
    routing.add_argument(
        "--cheap-share", type=_fraction, default=None, metavar="S",
        help="fraction of requests the router sends to the cheap model, 0..1; "
        "adds the routed cost, savings and blended input price",
    )
    routing.add_argument(
        "--mix", type=_mix, default=None, metavar="MODEL=SHARE[,MODEL=SHARE...]",
        help="N models: the fraction of requests routed to each (priced) model, summing to 1 "
        f"(within {MIX_TOLERANCE:g}); prints the routed mix, each model alone and the saving against "
        "the priciest model of the mix. Replaces the pair options (--cheap, --strong, --cheap-share)",
    )
    parser.add_argument("--cheap", default=None, metavar="MODEL", help=f"cheap model (default {DEFAULT_CHEAP})")
    parser.add_argument("--strong", default=None, metavar="MODEL", help=f"strong model (default {DEFAULT_STRONG})")
    add_price_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _profile(args: argparse.Namespace, requests: float) -> dict[str, Any]:
    """The traffic profile echoed at the top of the JSON object."""
    out: dict[str, Any] = {
        "requests": requests,
        "input_tokens": args.input_tokens,
        "output_tokens": args.output_tokens,
        "cached_share": args.cached_share,
    }
    if args.requests_per_day is not None:
        out["requests_per_day"] = args.requests_per_day
    return out


def compute_mix(args: argparse.Namespace, table: PriceTable) -> dict[str, Any]:
    """The `--mix` figures (cost.mix_monthly_cost), as the JSON object `--json` prints (unrounded)."""
    requests = args.requests if args.requests is not None else args.requests_per_day * DAYS_PER_MONTH
    mix = mix_monthly_cost(table, args.mix, requests, args.input_tokens, args.output_tokens, args.cached_share)
    out = _profile(args, requests)
    out.update(
        mix=dict(mix.shares),
        monthly_cost=dict(mix.alone),
        routed_by_model=dict(mix.routed_by_model),
        routed=mix.routed,
        priciest_model=mix.priciest,
        savings=mix.savings,
        savings_fraction=mix.savings_fraction,
        prices=_prices_record(table, list(args.mix)),
    )
    return out


def _prices_record(table: PriceTable, models: list[str]) -> dict[str, Any]:
    """Where the prices came from: the files, the sources in order, and each model's own source."""
    return {"as_of": table.as_of, "source": table.source, "files": list(table.files), "order": table.describe(),
            "sources": {m: table.source_of(m) for m in models}}


def compute(args: argparse.Namespace, table: PriceTable) -> dict[str, Any]:
    """The figures for parsed options, as the JSON object `--json` prints (unrounded)."""
    if args.mix is not None:
        return compute_mix(args, table)
    cheap_name, strong_name = args.cheap or DEFAULT_CHEAP, args.strong or DEFAULT_STRONG
    requests = args.requests if args.requests is not None else args.requests_per_day * DAYS_PER_MONTH
    pair = table.pricing_for_pair(cheap_name, strong_name)
    cheap, strong = pair.cheap, pair.strong
    io = (requests, args.input_tokens, args.output_tokens, args.cached_share)
    out = _profile(args, requests)
    out.update(
        cheap_model=cheap_name,
        strong_model=strong_name,
        monthly_cost={strong_name: monthly_cost(strong, *io), cheap_name: monthly_cost(cheap, *io)},
    )
    if args.cheap_share is not None:
        s = args.cheap_share
        always_strong = out["monthly_cost"][strong_name]
        routed = routed_monthly_cost(cheap, strong, *io, s)
        blended = blended_price(cheap.input, strong.input, s)
        out.update(
            routed=routed,
            cheap_share=s,
            savings=always_strong - routed,
            savings_fraction=(always_strong - routed) / always_strong if always_strong else 0.0,
            blended_input_price_per_1m=blended,
            blended_input_change_vs_strong=blended / strong.input - 1 if strong.input else 0.0,
        )
    out["prices"] = _prices_record(table, [strong_name, cheap_name])
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _count(n: float) -> str:
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}"


def _header(r: dict[str, Any], table: PriceTable) -> list[str]:
    per_day = f" ({_count(r['requests_per_day'])}/day x {DAYS_PER_MONTH} days)" if "requests_per_day" in r else ""
    return [
        f"{_count(r['requests'])} requests/month{per_day}, "
        f"{_count(r['input_tokens'])} input + {_count(r['output_tokens'])} output tokens each, "
        f"{r['cached_share']:.0%} of input cached",
        f"prices (USD per 1M tokens): {table.describe()}",
        "",
    ]


def _sources(names: list[str], table: PriceTable) -> list[str]:
    """One line per model: where its price came from, and its long-context tiers if it has any."""
    lines = ["", "price sources:"]
    for name in names:
        lines.append(f"  {name}: {table.source_of(name)}")
        for t in table.price(name).tiers:
            lines.append(f"    a request above {t.above_input_tokens:,} input tokens pays {t.input:g} input, "
                         f"{t.cached_input:g} cached, {t.output:g} output on all its tokens")
    return lines


def _dollars(x: float) -> str:
    return "$" + format(x, ",.2f")


def format_mix_table(r: dict[str, Any], table: PriceTable) -> str:
    """The human-readable `--mix` report: one row per model of the mix, then the mix and its saving."""
    lines = _header(r, table)
    width = max(24, *(len(m) + 2 for m in r["mix"]))
    lines.append(f"{'model':<{width}}{'share':>8}{'input/1M':>10}{'cached/1M':>11}{'output/1M':>11}"
                 f"{'alone/month':>15}{'in the mix':>14}")
    for name, share in r["mix"].items():
        p = table.price(name)
        lines.append(
            f"{name:<{width}}{share:>8.1%}{p.input:>10.3f}{p.cached_input:>11.3f}{p.output:>11.3f}"
            f"{_dollars(r['monthly_cost'][name]):>15}{_dollars(r['routed_by_model'][name]):>14}"
        )
    top = r["priciest_model"]
    lines += [
        "",
        f"routed mix of {len(r['mix'])} models: {_dollars(r['routed'])}/month",
        f"savings vs always {top} (the priciest in the mix, {_dollars(r['monthly_cost'][top])}): "
        f"{_dollars(r['savings'])}/month ({r['savings_fraction']:.1%})",
    ]
    return "\n".join(lines + _sources(list(r["mix"]), table))


def format_table(r: dict[str, Any], table: PriceTable) -> str:
    """The human-readable report."""
    if "mix" in r:
        return format_mix_table(r, table)
    cheap, strong = r["cheap_model"], r["strong_model"]
    lines = _header(r, table)
    lines.append(f"{'model':<24}{'input/1M':>10}{'cached/1M':>11}{'output/1M':>11}{'monthly cost':>16}")
    for name in (strong, cheap):
        p = table.price(name)
        lines.append(
            f"{name:<24}{p.input:>10.3f}{p.cached_input:>11.3f}{p.output:>11.3f}{'$' + format(r['monthly_cost'][name], ',.2f'):>16}"
        )
    if "routed" in r:
        s = r["cheap_share"]
        lines += [
            "",
            f"routed ({s:.0%} of requests on {cheap}): ${r['routed']:,.2f}/month",
            f"savings vs always {strong}: ${r['savings']:,.2f}/month ({r['savings_fraction']:.1%})",
            f"blended input price: ${r['blended_input_price_per_1m']:.4g} per 1M tokens "
            f"({r['blended_input_change_vs_strong']:+.1%} vs {strong} at ${table.price(strong).input:g})",
        ]
    return "\n".join(lines + _sources([strong, cheap], table))


def estimate_main(argv: Sequence[str] | None = None) -> int:
    """`router-cost estimate`; returns the exit status (2 for bad options or price files)."""
    parser = estimate_parser()
    return run_estimate(parser.parse_args(argv), parser)


def run_estimate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run parsed `router-cost estimate` options (errors through `parser`)."""
    if args.mix is not None and (args.cheap is not None or args.strong is not None):
        parser.error("--mix names its own models; --cheap and --strong belong to the pair form (drop them)")
    try:
        table = PriceTable.load(args.prices, price_as=dict(args.price_as))
        result = compute(args, table)
    except ConfigError as exc:
        parser.error(str(exc))  # exits 2 with the usage line and the message
    if args.json:
        print(json.dumps(_rounded(result)))
    else:
        print(format_table(result, table))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """`router-cost` and its subcommands, each with the options its own module defines."""
    parser = argparse.ArgumentParser(prog="router-cost", description="LLM cost: projected, on a labelled log, on logged traffic.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    est = sub.add_parser("estimate", help=ESTIMATE_HELP, **ESTIMATE_TEXT)  # type: ignore[arg-type]
    add_estimate_arguments(est)
    est.set_defaults(run=run_estimate, parser=est)
    sav = sub.add_parser("savings", help=savings_cli.HELP, **savings_cli.DESCRIPTION)  # type: ignore[arg-type]
    savings_cli.add_arguments(sav)
    sav.set_defaults(run=savings_cli.run, parser=sav)
    obs = sub.add_parser("observed", help=report_cli.HELP, description=report_cli.DESCRIPTION)
    report_cli.add_arguments(obs)
    obs.set_defaults(run=report_cli.run, parser=obs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `router-cost`; returns the exit status."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_in)
    except SystemExit as exc:
        if args_in and args_in[0] in ("estimate", "savings", "observed"):
            raise  # the subcommand's own usage error, as its module exits
        return int(exc.code or 0)  # --help (0), or no or an unknown subcommand (2)
    return int(args.run(args, args.parser))


if __name__ == "__main__":
    sys.exit(main())
