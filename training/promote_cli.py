"""`router-promote`: gate a registered router version and move the serving alias to it, or back.

Exit status: 0 promoted (or rolled back), 3 refused (the reasons are printed), 2 usage or data
error (no such model or version, an unreadable eval log, a candidate trained on another model
pair than the champion or the eval log, a model no price covers: --prices / --price-as, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from router_model.cli_args import add_price_options, setup_logging
from router_model.errors import RouterError
from training.promote import EXIT_USAGE, PROMOTION_EXPERIMENT, PromoteConfig, promote, rollback

EPILOG = """
Rules (docs/operations.md): the candidate takes the alias when the paired bootstrap 90% interval of
its APGR minus the champion's APGR has a lower bound >= -TOLERANCE, and its own goal (quality floor)
holds on the eval log at its threshold. The eval log is frozen at the first promotion (sha256), and
must share no prompt with either model's training rows. The old holder is kept as @previous.

Examples:
  router-promote --candidate latest --eval-log eval.jsonl
  router-promote --candidate 7 --eval-log eval.jsonl --tolerance 0.02
  router-promote --eval-log eval.jsonl --price-as my-ft=gpt-4o-mini   # a model without a list price
  router-promote --rollback
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-promote",
        description="Compare a registered candidate with the version holding an alias on a frozen eval log; "
        "move the alias when it is not worse.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--candidate", default="latest", metavar="VERSION|latest",
                   help="registered version to promote (default: %(default)s, the highest version number)")
    p.add_argument("--eval-log", type=Path, metavar="FILE",
                   help="labelled JSONL log both versions are scored on (required unless --rollback)")
    p.add_argument("--alias", default="champion", help="the alias servers follow (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.01, metavar="T",
                   help="how much worse APGR (interval lower bound) and the goal may be (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="promote whatever the gate says (the reasons are still printed and logged); re-freezes the eval log")
    p.add_argument("--rollback", action="store_true", help="move the alias back to the previous holder")
    p.add_argument("--registered-model", default="router-model", metavar="NAME", help="MLflow registered model (default: %(default)s)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=PROMOTION_EXPERIMENT, help="MLflow experiment of the comparison runs (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where versions are downloaded (default: $ROUTER_CACHE_DIR/registry or ~/.cache/router-model/registry)")
    add_price_options(p, price_as_default="over the mapping each router was trained with (its metadata's price_as)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object instead of the table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        if args.rollback and (args.eval_log is not None or args.force or args.candidate != "latest"
                              or args.prices is not None or args.price_as):
            raise RouterError("--rollback takes no --candidate, --eval-log, --force, --prices or --price-as")
        if not args.rollback and args.eval_log is None:
            raise RouterError("--eval-log FILE is required (or --rollback)")
        config = PromoteConfig(eval_log=args.eval_log, candidate=str(args.candidate), alias=args.alias,
                               tolerance=args.tolerance, force=args.force, registered_model=args.registered_model,
                               tracking_uri=args.tracking_uri, experiment=args.experiment, bootstrap=args.bootstrap,
                               seed=args.seed, cache_dir=args.cache_dir,
                               prices=Path(args.prices) if args.prices is not None else None,
                               price_as=tuple(args.price_as))
        result = rollback(config) if args.rollback else promote(config)
    except (RouterError, ValueError, OSError) as e:
        print(f"router-promote: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - MLflow's own errors (store unreachable, permissions): a usage error
        if type(e).__name__ != "MlflowException":
            raise
        print(f"router-promote: error: MLflow: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
    else:
        print(result.table)
        if result.run_id:
            print(f"mlflow: comparison logged as run {result.run_id} ({config.experiment})")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
