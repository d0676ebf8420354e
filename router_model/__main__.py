"""`python -m router_model`: score a JSONL file, route a few prompts, or describe a model directory.

Imports only router_model (onnxruntime, tokenizers, numpy) and tqdm: no torch, no sklearn.
Exit status: 0 done; 2 bad usage, a bad input line, or an unusable model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from router_model.cli_args import positive_int
from router_model.errors import ArtifactError, ConfigError, InvalidRequestError, RouterError
from router_model.settings import ENV_MODEL_DIR, GRAPHS

PROG = "python -m router_model"


def _add_model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        default=os.environ.get(ENV_MODEL_DIR) or None,
        help=f"trained model directory (metadata.json, model.onnx, model.int8.onnx, tokenizer.json); "
        f"default: ${ENV_MODEL_DIR}" + (f" (now {os.environ[ENV_MODEL_DIR]})" if os.environ.get(ENV_MODEL_DIR) else " (unset)"),
    )


def _add_graph_threads(p: argparse.ArgumentParser, default_threads: str) -> None:
    p.add_argument(
        "--graph",
        choices=GRAPHS,
        default=None,
        help="which ONNX graph to run: int8 (quantised embedder, about 2x faster) or fp32 (exactly the trained "
        "model); default: the artifact's default_graph, chosen at training time",
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help=f"onnxruntime intra-op threads (default: {default_threads})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Route LLM requests with a trained router-model directory: score a JSONL file, "
        "route prompts given on the command line, or describe the model.",
        epilog=f"Each command takes --model-dir DIR, defaulting to ${ENV_MODEL_DIR}. "
        f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sc = sub.add_parser(
        "score",
        help="route every request of a JSONL file into a JSONL file of decisions",
        description="Route every request of a JSONL file, streaming in bounded memory (a chunk of lines at a time). "
        "Input line: a JSON object with 'prompt' (string) or 'messages' (OpenAI chat messages), optional 'id' "
        "(default FILE-STEM:LINE), optional 'tags' (list of strings) and 'context_turns'; other fields are ignored, "
        "so a labelled log can be scored as it is. Blank lines are skipped. Output line, in input order: "
        "line, id, model, p_cheap_ok, confidence, reason.",
        epilog="Exit status: 0 done; 2 a bad input line (reported as IN:LINE: field: reason, no output written) "
        "unless --skip-invalid, a bad option, or an unusable model directory.",
    )
    _add_model_dir(sc)
    sc.add_argument("--input", required=True, metavar="IN.jsonl", help="requests to route, one JSON object per line ('-' = stdin)")
    sc.add_argument("--output", required=True, metavar="OUT.jsonl",
                    help="where to write one decision per input line ('-' = stdout); a file is written beside "
                    "and renamed into place when the run succeeds")
    _add_graph_threads(sc, "all cores")
    sc.add_argument("--batch-size", type=positive_int, default=256, metavar="N",
                    help="lines read, routed and written per chunk; bounds memory (default: %(default)s)")
    sc.add_argument("--skip-invalid", action="store_true",
                    help="for a bad input line, write an output line with an 'error' field and go on (a count is "
                    "printed at the end) instead of stopping with exit status 2")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    rt = sub.add_parser(
        "route",
        help="route prompts given as arguments; print one JSON decision per prompt",
        description="Route each PROMPT and print its decision as one JSON object per line "
        "(model, p_cheap_ok, confidence, threshold, reason, artifact_version, prompt_tokens).",
    )
    _add_model_dir(rt)
    rt.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text (quote it); several prompts are routed in one batch")
    rt.add_argument("--tags", default="", metavar="A,B",
                    help="comma-separated request tags applied to every prompt (e.g. high-accuracy routes to the strong model)")
    _add_graph_threads(rt, "1")

    inf = sub.add_parser(
        "info",
        help="print the model directory's metadata summary",
        description="Check a model directory (every file against its recorded sha256) and print its summary: "
        "model pair, threshold, goal, held-out metrics, parity checks and versions.",
    )
    _add_model_dir(inf)
    inf.add_argument("--json", action="store_true", help="print the full metadata.json instead of the summary")
    return parser


def _model_dir(args: argparse.Namespace) -> str:
    if not args.model_dir:
        raise ConfigError(f"no model directory: pass --model-dir DIR or set {ENV_MODEL_DIR}")
    return args.model_dir


def _load(args: argparse.Namespace, default_threads: int):
    from router_model.router import Router

    return Router.load(_model_dir(args), graph=args.graph, threads=args.threads or default_threads)


def cmd_score(args: argparse.Namespace) -> int:
    from router_model.score import score_file, summarize

    router = _load(args, os.cpu_count() or 1)
    report = score_file(
        router,
        args.input,
        args.output,
        batch_size=args.batch_size,
        skip_invalid=args.skip_invalid,
        show_progress=not args.no_progress,
    )
    print(summarize(report), file=sys.stderr)
    if report.invalid:
        print(f"{report.invalid} invalid line(s) written with an 'error' field; first ones:", file=sys.stderr)
        for e in report.first_errors:
            print(f"  {e}", file=sys.stderr)
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    router = _load(args, 1)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    decisions = router.predict_batch(list(args.prompts), tags=[tags] * len(args.prompts))
    for d in decisions:
        print(json.dumps(d.to_dict(), ensure_ascii=False))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from router_model.artifact import read_metadata, verify_file
    from router_model.summary import metadata_summary

    path = _model_dir(args)
    meta = read_metadata(path)
    for name, sha in sorted(meta.files.items()):
        verify_file(path, name, sha)
    if args.json:
        print(json.dumps(meta.to_dict(), indent=2, sort_keys=True))
    else:
        print(metadata_summary(meta, path))
        print(f"files: {len(meta.files)} verified against their sha256")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"score": cmd_score, "route": cmd_route, "info": cmd_info}
    from router_model.score import InputLineError

    try:
        return commands[args.command](args)
    except InputLineError as e:
        print(str(e), file=sys.stderr)
        print(f"{PROG} {args.command}: stopped at the first bad line, no output written "
              "(--skip-invalid writes an error line for it and goes on)", file=sys.stderr)
        return 2
    except (ArtifactError, ConfigError, InvalidRequestError, FileNotFoundError, RouterError) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
