"""`router-cost savings`: the command line of the savings report, and its table, JSON and plot.

The numbers come from `router_model.offline.savings` (a cheap/strong router) or
`router_model.offline.multi_savings` (an N-model router, told apart by its metadata); this module
parses the options, prints the report as a table (or one JSON object with ``--json``) and draws
the cost-quality plane as a PNG (``--plot``, which needs matplotlib: the train extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_model.artifact import read_metadata
from router_model.cli_args import add_price_options, non_negative_number, whole_number
from router_model.cost import DEFAULT_OUTPUT_TOKENS
from router_model.errors import ConfigError, RouterError
from router_model.offline.metrics import expected_at_shares
from router_model.offline.multi_savings import format_multi_report, multi_report
from router_model.offline.savings import DEFAULT_REQUESTS_PER_MONTH, LabelledScores, compute_report, score_log

__all__ = ["build_parser", "format_report", "main", "save_plot"]

_DIGITS = 10  # significant digits in --json output (drops float noise only)


# ------------------------------------------------------------------------------ output


def _money(x: float) -> str:
    """Whole dollars (cents below $100); float noise around zero prints as $0."""
    digits = 0 if abs(x) >= 100 else 2
    if round(x, digits) == 0:
        return "$0"
    return f"-${-x:,.{digits}f}" if x < 0 else f"${x:,.{digits}f}"


def format_report(rep: dict[str, Any]) -> str:
    """The terminal table."""
    V = rep["requests_per_month"]
    a_s, a_c, ch = rep["always_strong"], rep["always_cheap"], rep["chosen"]
    pr = rep["prices"]
    lines = [
        f"Savings report: router {rep['model_dir']} ({rep['artifact_version']}), threshold {ch['threshold']:.4f}",
        *([f"goal: {rep['goal_summary']}"] if rep.get("goal_summary") else []),
        f"log: {', '.join(rep['logs'])}: {rep['n']} rows (read {rep['rows_read']}, skipped {sum(rep['skipped'].values())}); "
        f"cheap = {rep['cheap_model']}, strong = {rep['strong_model']}",
        f"volume: {V:,.0f} requests/month; mean tokens per request {rep['mean_input_tokens']:,.0f} in + "
        f"{rep['mean_output_tokens']:,.0f} out",
        f"prices (USD per 1M in/out): cheap ${pr['cheap_per_1m']['input']:g}/${pr['cheap_per_1m']['output']:g}, "
        f"strong ${pr['strong_per_1m']['input']:g}/${pr['strong_per_1m']['output']:g} ({pr['source']}, as of {pr['as_of']})",
        "",
        f"always strong: pass rate {a_s['pass_rate']:.3f}, {_money(a_s['monthly_cost'])}/month",
        f"always cheap:  pass rate {a_c['pass_rate']:.3f} ({a_c['quality_vs_strong']:.1%} of strong), "
        f"{_money(a_c['monthly_cost'])}/month, saves {_money(a_c['saved_vs_strong'])}/month",
        f"router at its threshold: {ch['router']['cheap_share']:.1%} cheap calls, pass rate {ch['router']['pass_rate']:.3f} "
        f"({ch['router']['quality_vs_strong']:.1%} of strong), {_money(ch['router']['monthly_cost'])}/month, "
        f"saves {_money(ch['router']['saved_vs_strong'])}/month ({ch['router']['saved_fraction']:.1%}); "
        f"random at that share {ch['random']['quality_vs_strong']:.1%}, oracle {ch['oracle']['quality_vs_strong']:.1%} of strong",
        *_escalation_lines(ch),
        "",
        f"{'':14}|{'router':^44}|{'random':^20}|{'oracle':^20}",
        f"{'strong':>7}{'cheap':>7}|{'pass':>7}{'q/strong':>10}{'$/month':>13}{'saved/mo':>14}|"
        f"{'q/strong':>9}{'saved/mo':>11}|{'q/strong':>9}{'saved/mo':>11}",
    ]
    for g in rep["grid"]:
        r, rnd, o = g["router"], g["random"], g["oracle"]
        mark = "*" if g["chosen"] else " "
        lines.append(
            f"{mark}{g['strong_share']:>6.1%}{g['cheap_share']:>7.1%}|{r['pass_rate']:>7.3f}{r['quality_vs_strong']:>10.3f}"
            f"{_money(r['monthly_cost']):>13}{_money(r['saved_vs_strong']):>14}|"
            f"{rnd['quality_vs_strong']:>9.3f}{_money(rnd['saved_vs_strong']):>11}|"
            f"{o['quality_vs_strong']:>9.3f}{_money(o['saved_vs_strong']):>11}"
        )
    lines.append("* = the router's threshold (the exact decision p_cheap_ok < threshold goes strong); other rows "
                 "route the top share by 1 - p_cheap_ok.")
    lines.append("saved/mo = always-strong cost minus this routing's cost; always-cheap would save "
                 f"{_money(a_c['saved_vs_strong'])}/month. Random and oracle are in expectation at the same strong share.")
    rules = rep["rules"]
    by = ", ".join(f"{k} {v}" for k, v in rules["by_reason"].items()) or "none"
    lines.append(f"rules (not applied above) would send {rules['strong_rows']} row(s) "
                 f"({rules['strong_share']:.1%}) to strong: {by}")
    lines += [f"note: {n}" for n in rep["notes"]]
    return "\n".join(lines)


def _escalation_lines(chosen: dict[str, Any]) -> list[str]:
    esc = chosen.get("escalation")
    if not esc:
        return []
    return [f"  with escalation (included above): {esc['escalated_share']:.1%} of requests get the cheap answer "
            f"replaced by the strong one (answer score >= {esc['answer_threshold']:.4f}); they wait for the cheap answer "
            f"first: about {esc['added_wait_p50_s']:.1f} s p50, {esc['added_wait_p99_s']:.1f} s p99 ({esc['wait_assumption']})"]


def save_plot(rep: dict[str, Any], sc: LabelledScores, path: str | Path, *, n_points: int = 101) -> Path:
    """PNG of quality (relative to always-strong) against monthly cost: router, random, oracle."""
    try:
        import matplotlib
    except ImportError as e:  # an optional dependency: the rest of the report needs only numpy
        raise RouterError(f"--plot needs matplotlib (pip install matplotlib, or router-model[train]): {e}") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(0.0, 1.0, n_points)
    V = rep["requests_per_month"]
    q_strong = rep["always_strong"]["pass_rate"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, r, style in (
        ("router", 1.0 - sc.p, "-"),
        ("random", np.zeros(len(sc.p)), "--"),
        ("oracle", sc.strong_passed - sc.cheap_passed, ":"),
    ):
        q, c = expected_at_shares(r, sc.cheap_passed, sc.strong_passed, cost_cheap=sc.cost_cheap,
                                  cost_strong=sc.cost_strong, shares=xs)
        ax.plot(c * V, q / q_strong, style, label=name)
    ch = rep["chosen"]["router"]
    ax.plot([ch["monthly_cost"]], [ch["quality_vs_strong"]], "o", color="black", zorder=5,
            label=f"chosen threshold: {ch['cheap_share']:.0%} cheap, saves {_money(ch['saved_vs_strong'])}/mo")
    for key, label in (("always_cheap", "always cheap"), ("always_strong", "always strong")):
        pt = rep[key]
        ax.annotate(label, (pt["monthly_cost"], pt["quality_vs_strong"]), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_xlabel(f"monthly cost in $ at {V:,.0f} requests/month")
    ax.set_ylabel("quality relative to always-strong")
    ax.set_title(f"Cost vs quality ({rep['n']} rows: {rep['cheap_model']} vs {rep['strong_model']})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{_DIGITS}g}")  # significant digits: per-request dollars are tiny
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ------------------------------------------------------------------------------ CLI


HELP = "what a trained router saves on a labelled log (held-out rows)"
DESCRIPTION = dict(
    description="What a trained router saves on a labelled request log: cheap-call share, pass rate, quality "
    "relative to always-strong and dollars a month, at the router's threshold and across strong-call shares, "
    "beside random and oracle routing. Use a log the router was NOT trained on.",
    epilog="example:\n  router-cost savings --model-dir artifacts/router --log heldout.jsonl "
    "--requests-per-month 1000000 --plot savings.png\nexit status: 0 ok, 1 unreadable log or model directory, 2 bad option",
    formatter_class=argparse.RawDescriptionHelpFormatter,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-cost savings", **DESCRIPTION)  # type: ignore[arg-type]
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `router-cost savings` (router-cost's subparser and this module's own parser)."""
    p.add_argument("--model-dir", required=True, type=Path, metavar="DIR", help="the router's model directory")
    p.add_argument("--log", action="append", required=True, type=Path, metavar="FILE",
                   help="labelled request log (JSONL, see data/README.md); repeat for several files")
    p.add_argument("--requests-per-month", type=non_negative_number, default=DEFAULT_REQUESTS_PER_MONTH, metavar="N",
                   help="your volume (default: %(default)s)")
    p.add_argument("--cheap", metavar="NAME", help="the cheap model's name in the log (default: the router's)")
    p.add_argument("--strong", metavar="NAME", help="the strong model's name in the log (default: the router's)")
    add_price_options(p, price_as_default="default: the mapping the router was trained with")
    p.add_argument("--output-tokens", type=whole_number, default=None, metavar="N",
                   help="output tokens per request assumed where the log has none (default: " + str(DEFAULT_OUTPUT_TOKENS) + ")")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="write the cost-quality plot here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed rows (counted per reason) instead of stopping")


def main(argv: Sequence[str] | None = None) -> int:
    """`router-cost savings`; returns the exit status."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run parsed `router-cost savings` options (errors through `parser`)."""
    if (args.cheap is None) != (args.strong is None):
        parser.error("name both --cheap and --strong, or neither (the router's pair is used)")
    try:
        if read_metadata(args.model_dir).multi is not None:  # an N-model router: multi_savings.py
            mrep = multi_report(args.model_dir, list(args.log), requests_per_month=args.requests_per_month,
                                prices=args.prices, price_as=dict(args.price_as), output_tokens=args.output_tokens,
                                skip_invalid=args.skip_invalid)
            print(json.dumps(_rounded(mrep)) if args.json else format_multi_report(mrep))
            return 0
        sc = score_log(args.model_dir, args.log, cheap=args.cheap, strong=args.strong, prices=args.prices,
                       price_as=dict(args.price_as),
                       output_tokens=args.output_tokens, skip_invalid=args.skip_invalid)
        rep = compute_report(sc, requests_per_month=args.requests_per_month)
        if args.plot is not None:
            rep["plot"] = str(save_plot(rep, sc, args.plot))
    except ConfigError as exc:
        parser.error(str(exc))  # a bad price file or setting: exit 2 with the usage line
    except (RouterError, ValueError, OSError) as exc:
        print(f"router-savings: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_rounded(rep)))
    else:
        print(format_report(rep))
        if "plot" in rep:
            print(f"plot: {rep['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
