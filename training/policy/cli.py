"""`router-policy`: route by a written policy before any labels exist (a day-0 router).

    router-policy init --out policy.yaml                 # a copy of the default policy to edit
    router-policy check --policy policy.yaml             # validate only
    router-policy build --policy policy.yaml --out DIR   # a model directory Router, router-serve and the gateway load
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from router_model.artifact import GRAPHS
from router_model.cli_args import setup_logging
from router_model.errors import RouterError
from training.policy.schema import DEFAULT_POLICY, PolicyError, load_policy

EPILOG = """
The policy's routes are example requests per tier (cheap or strong); a request goes to the tier of
its most similar example. It is a starting point with no measured quality on your traffic: serve it
in observe mode, collect labels, then `router-train --log labels.jsonl`. See docs/policy.md.

Examples:
  router-policy build --out artifacts/policy                      # the shipped default policy
  router-policy init --out policy.yaml && $EDITOR policy.yaml
  router-policy build --policy policy.yaml --out artifacts/policy --cheap my-small --strong my-large
  python -m router_model route --model-dir artifacts/policy --table "Translate 'hello' into French."
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-policy", description="Build a day-0 router from a written routing policy.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a model directory from a policy")
    b.add_argument("--policy", type=Path, default=DEFAULT_POLICY, metavar="FILE",
                   help="policy YAML (default: the shipped default policy, %(default)s)")
    b.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="model directory to write (replaced atomically if it is a router model directory; "
                   "any other existing directory is refused)")
    b.add_argument("--cheap", metavar="NAME", help="override the policy's cheap_model")
    b.add_argument("--strong", metavar="NAME", help="override the policy's strong_model")
    b.add_argument("--graph", choices=("auto", *GRAPHS), default="auto",
                   help="graph served by default: auto picks int8 when it agrees with fp32 on >=99%% of the check "
                   "decisions (default: %(default)s)")
    b.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="embedder export and embedding cache (default: $ROUTER_CACHE_DIR or ~/.cache/router-model)")
    c = sub.add_parser("check", help="validate a policy file and print its routes")
    c.add_argument("--policy", type=Path, default=DEFAULT_POLICY, metavar="FILE")
    i = sub.add_parser("init", help="write a copy of the default policy to edit (never overwrites)")
    i.add_argument("--out", type=Path, required=True, metavar="FILE")
    return p


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind, so the staged directory is removed


def _check(path: Path) -> None:
    policy = load_policy(path)
    print(f"{path}: policy {policy.name!r}, cheap={policy.cheap_model} strong={policy.strong_model}, "
          f"threshold {policy.threshold}")
    for r in policy.ordered_routes:
        print(f"  {r.tier:<6} {r.name:<28} {len(r.examples)} examples")


def _init(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise PolicyError("exists; refusing to overwrite it (choose another --out)", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEFAULT_POLICY, out)
    print(f"wrote {out}: edit its routes, then: router-policy build --policy {out} --out artifacts/policy")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        if args.command == "check":
            _check(args.policy)
        elif args.command == "init":
            _init(args.out)
        else:
            from training.policy.builder import BuildConfig, build_policy

            config = BuildConfig(policy=args.policy, out_dir=args.out, cheap_model=args.cheap, strong_model=args.strong,
                                 default_graph=args.graph, cache_dir=args.cache_dir)
            build_policy(config, say=lambda m: print(m, flush=True))
            print(f"next:\n  python -m router_model route --model-dir {args.out} --table \"Summarise this email: ...\"\n"
                  f"  router-serve --model-dir {args.out} --observe --decision-log decisions.jsonl")
    except (RouterError, ValueError, FileNotFoundError) as e:
        print(f"router-policy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
