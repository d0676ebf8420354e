"""`router-drift`: compare a decision log's live traffic with the model's training data.

Exit codes: 0 no drift (stable, or moderate without --fail-on moderate), 3 drift (a PSI at or
past 0.25, the strong share or the far share off), 2 usage or data error (bad option, unreadable
log, a model without a drift reference, too few decisions in the window).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from router_model.artifact import read_metadata
from router_model.cli_args import non_negative_number, positive_int
from router_model.errors import ArtifactError
from router_model.observe.decision_log import DecisionLogError, parse_timestamp, read_decision_log
from router_model.observe.drift import (
    DRIFT,
    MODERATE,
    PSI_DRIFT,
    PSI_MODERATE,
    DriftReport,
    compare,
    read_reference,
)

EXIT_OK, EXIT_USAGE, EXIT_DRIFT = 0, 2, 3
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def window_arg(text: str) -> timedelta | None:
    """`7d`, `24h`, `90m`, `3600s`, `2w`, or `all` (None: every record)."""
    if text.strip().lower() == "all":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 7d, 24h, 90m or 'all', got {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-drift",
        description=(
            "Compare live traffic in a decision log with the training data recorded in the model directory: "
            f"PSI of p_cheap_ok, prompt tokens, rule hits and centroid distance (bands {PSI_MODERATE} / {PSI_DRIFT}), "
            "the strong share against the expected share, the share of prompts far from every training centroid. "
            "Exit 0 no drift, 3 drift, 2 usage or data error."
        ),
    )
    p.add_argument("--log", required=True, metavar="FILE", help="decision log (JSON lines) from router-serve or router-gateway")
    p.add_argument("--model-dir", required=True, metavar="DIR", help="the model directory that made the decisions")
    p.add_argument("--window", type=window_arg, default=timedelta(days=7), metavar="DURATION",
                   help="only decisions this recent (7d, 24h, 90m, or all; default 7d, counted back from now)")
    p.add_argument("--min-records", type=positive_int, default=100, metavar="N",
                   help="refuse to judge fewer decisions than this (default 100: PSI of fewer is mostly noise)")
    p.add_argument("--strong-tolerance", type=non_negative_number, default=0.10, metavar="X",
                   help="flag a strong share further than this from the expected one (default 0.10)")
    p.add_argument("--far-tolerance", type=non_negative_number, default=0.05, metavar="X",
                   help="flag a far share more than this above the reference rows' (default 0.05)")
    p.add_argument("--fail-on", choices=(MODERATE, DRIFT), default=DRIFT,
                   help="exit 3 already in the moderate band (default: only on drift)")
    p.add_argument("--any-version", action="store_true",
                   help="use decisions of every artifact version (default: only the model directory's)")
    p.add_argument("--skip-malformed", action="store_true", help="skip malformed lines instead of stopping")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def format_drift(report: DriftReport, header: str) -> str:
    """The report as a plain-text table."""
    lines = [header, "", f"{'quantity':<18} {'n':>7} {'PSI':>7}  band"]
    for q in report.quantities:
        value = "-" if q.psi is None else f"{q.psi:.3f}"
        lines.append(f"{q.name:<18} {q.n:>7} {value:>7}  {q.band}")
    lines += ["", f"{'share':<18} {'n':>7} {'expected':>9} {'observed':>9} {'tolerance':>10}"]
    for s in report.shares:
        observed = "-" if s.observed is None else f"{s.observed:.3f}"
        flag = "DRIFT" if s.drifted else ("ok" if s.n else "no data")
        sign = "+" if s.name == "far_share" else "±"
        lines.append(f"{s.name:<18} {s.n:>7} {s.expected:>9.3f} {observed:>9} {sign + format(s.tolerance, '.2f'):>10}  {flag}")
    lines += ["", f"PSI bands: < {PSI_MODERATE} stable, {PSI_MODERATE}-{PSI_DRIFT} moderate (watch), >= {PSI_DRIFT} drift."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"router-drift: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        meta = read_metadata(args.model_dir)
        reference = read_reference(args.model_dir, meta.files)
    except ArtifactError as exc:
        return fail(str(exc))
    since = datetime.now(UTC) - args.window if args.window is not None else None
    records, other_versions, older = [], Counter[str](), 0
    try:
        for r in read_decision_log(args.log, skip_malformed=args.skip_malformed):
            if since is not None and parse_timestamp(r["ts"]) < since:
                older += 1
            elif not args.any_version and r.get("artifact_version") != meta.artifact_version:
                other_versions[str(r.get("artifact_version"))] += 1
            else:
                records.append(r)
    except DecisionLogError as exc:
        hint = " (use --skip-malformed to skip such lines)" if exc.line else ""
        return fail(f"{exc}{hint}")
    window = "all time" if args.window is None else f"the last {args.window}"
    if len(records) < args.min_records:
        found = f"{len(records)} decision(s) of artifact {meta.artifact_version} in {window}"
        notes = ([f"{older} older"] if older else []) + [f"{n} of version {v}" for v, n in other_versions.most_common(3)]
        extra = f" ({', '.join(notes)} left out; see --window, --any-version)" if notes else ""
        return fail(f"{found}{extra}: fewer than --min-records {args.min_records}, too few to judge drift")
    report = compare(reference, records, strong_tolerance=args.strong_tolerance, far_tolerance=args.far_tolerance)
    failed = report.status == DRIFT or (args.fail_on == MODERATE and report.status == MODERATE)
    code = EXIT_DRIFT if failed else EXIT_OK
    if args.json:
        print(json.dumps({**report.to_dict(), "artifact_version": meta.artifact_version, "exit_code": code,
                          "reference_rows": reference.n, "left_out_older": older,
                          "left_out_other_versions": dict(other_versions)}))
    else:
        header = (f"router-drift: {len(records)} decisions of artifact {meta.artifact_version} in {window}, "
                  f"against its training data ({reference.n} {reference.split} rows)")
        print(format_drift(report, header))
        print(f"status: {report.status} (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
