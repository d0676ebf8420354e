"""`router-cost observed`: the observation report's options and how a run prints it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from router_model.cli_args import add_price_options, non_negative_number
from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.cost_projection import DAYS_PER_MONTH
from router_model.errors import ConfigError
from router_model.observe.decision_log import DecisionLogError, read_decision_log
from router_model.observe.report import build_report, format_report

# ---------------------------------------------------------------- CLI


HELP = "what routing would have saved on logged traffic (observation mode)"
DESCRIPTION = (
    "Summarise an observation-mode decision log (JSON lines, written by router-serve or router-gateway): "
    "share of calls that would go cheap, p_cheap_ok distribution, rules, and monthly cost with and "
    f"without routing. Volume defaults to the log's own rate extrapolated to {DAYS_PER_MONTH} days."
)


def build_parser() -> argparse.ArgumentParser:
    rep = argparse.ArgumentParser(prog="router-cost observed", description=DESCRIPTION)
    add_arguments(rep)
    return rep


def add_arguments(rep: argparse.ArgumentParser) -> None:
    """The options of `router-cost observed` (router-cost's subparser and this module's own parser)."""
    rep.add_argument("--log", required=True, metavar="FILE", help="the decision log (JSON lines)")
    rep.add_argument(
        "--requests-per-month", type=non_negative_number, default=None, metavar="N",
        help="monthly volume for the cost projection (default: the log's rate x 30 days)",
    )
    rep.add_argument(
        "--output-tokens", type=non_negative_number, default=DEFAULT_OUTPUT_TOKENS, metavar="O",
        help=f"assumed output tokens per request; the log has none (default {DEFAULT_OUTPUT_TOKENS})",
    )
    rep.add_argument(
        "--input-tokens", type=non_negative_number, default=None, metavar="I",
        help="input tokens per request (default: the log's mean prompt_tokens, per side)",
    )
    add_price_options(rep)
    rep.add_argument("--skip-malformed", action="store_true", help="skip malformed lines instead of stopping")
    rep.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def main(argv: Sequence[str] | None = None) -> int:
    """`router-cost observed ...`; exit 2 on a bad option, price file or log."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run parsed `router-cost observed` options (errors through `parser`)."""
    skipped: list[DecisionLogError] = []
    try:
        prices = PriceTable.load(args.prices, price_as=dict(args.price_as))
        report = build_report(
            read_decision_log(args.log, skip_malformed=args.skip_malformed, skipped=skipped),
            prices=prices,
            requests_per_month=args.requests_per_month,
            output_tokens=args.output_tokens,
            input_tokens=args.input_tokens,
        )
    except (ConfigError, DecisionLogError) as exc:
        hint = " (use --skip-malformed to skip such lines)" if getattr(exc, "line", None) else ""
        parser.error(f"{exc}{hint}")
    if args.json:
        out = report.to_dict()
        out["skipped_lines"] = [e.line for e in skipped]
        print(json.dumps(out))
    else:
        print(format_report(report))
        if skipped:
            print(f"skipped {len(skipped)} malformed line(s), first: {skipped[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
