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
from pathlib import Path

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
        "line, id, model, p_cheap_ok, confidence, margin, reason.",
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
    sc.add_argument("--ray", metavar="ADDRESS", default=None,
                    help="score on Ray Data: 'auto' (the cluster this node belongs to), 'ray://HOST:10001', or "
                    "'local' (start one here); needs the ray extra; the same output as without it (docs/scale.md)")
    sc.add_argument("--ray-actors", type=positive_int, default=None, metavar="N",
                    help="with --ray: scoring actors, each with one Router of --threads threads (default: the "
                    "cluster's CPUs / threads)")

    rt = sub.add_parser(
        "route",
        help="route prompts (or one chat request) given on the command line; print each decision",
        description="Route each PROMPT, or one OpenAI chat request (--messages), and print its decision as one "
        "JSON object per line (model, p_cheap_ok, confidence, margin, threshold, reason, artifact_version, "
        "prompt_tokens), or as a table with --table.",
        epilog="examples:\n  python -m router_model route 'Translate thank you into German.'\n"
        "  python -m router_model route --messages chat.json\n"
        "  python -m router_model route --image https://example.com/x.png 'What is in this picture?'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_dir(rt)
    rt.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (quote it); several prompts are routed in one batch")
    rt.add_argument("--messages", metavar="FILE", help="route one request given as OpenAI chat messages: a JSON list "
                    "(or an object with 'messages') in FILE, '-' for stdin")
    rt.add_argument("--image", action="append", default=[], metavar="URL",
                    help="attach an image (URL or data: URI) to each PROMPT as an image_url part (repeatable)")
    rt.add_argument("--table", action="store_true", help="print a table (prompt, model, confidence, reason) instead of JSON")
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
    from router_model.score import ScoreReport, score_file, shard_pairs, summarize

    if args.ray:
        from router_model.score_ray import score_with_ray

        report = score_with_ray(_model_dir(args), args.input, args.output, address=args.ray, graph=args.graph,
                                threads=args.threads or 1, batch_size=args.batch_size, skip_invalid=args.skip_invalid,
                                actors=args.ray_actors, show_progress=not args.no_progress)
    else:
        router = _load(args, os.cpu_count() or 1)
        # A directory of shards: each *.jsonl scored, in name order, into the same name in --output.
        pairs = shard_pairs(args.input, args.output) if Path(args.input).is_dir() else [(args.input, args.output)]
        report = ScoreReport()
        for src, dst in pairs:
            part = score_file(router, src, dst, batch_size=args.batch_size, skip_invalid=args.skip_invalid,
                              show_progress=not args.no_progress)
            report.merge(part)
    print(summarize(report), file=sys.stderr)
    if report.invalid:
        print(f"{report.invalid} invalid line(s) written with an 'error' field; first ones:", file=sys.stderr)
        for e in report.first_errors:
            print(f"  {e}", file=sys.stderr)
    return 0


def _route_requests(args: argparse.Namespace) -> tuple[list, list[str]]:
    """(requests, a short label per request) from PROMPTs, --image and --messages."""
    if args.messages is not None:
        if args.prompts:
            raise ConfigError("give PROMPTs or --messages, not both")
        try:
            text = sys.stdin.read() if args.messages == "-" else Path(args.messages).read_text(encoding="utf-8")
            obj = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"--messages {args.messages}: {e}") from None
        messages = obj.get("messages") if isinstance(obj, dict) else obj
        if not isinstance(messages, list):
            raise ConfigError(f"--messages {args.messages}: expected a JSON list of chat messages (or {{'messages': [...]}})")
        return [messages], [f"<{len(messages)} messages>"]
    if not args.prompts:
        raise ConfigError("nothing to route: give one or more PROMPTs, or --messages FILE")
    if not args.image:
        return list(args.prompts), list(args.prompts)
    images = [{"type": "image_url", "image_url": {"url": u}} for u in args.image]
    requests = [[{"role": "user", "content": [{"type": "text", "text": p}, *images]}] for p in args.prompts]
    return requests, [f"{p} [+{len(images)} image(s)]" for p in args.prompts]


def _table(labels: list[str], decisions: list) -> str:
    width = min(70, max(len("prompt"), *(len(x) for x in labels)))
    mw = max(len("model"), *(len(d.model) for d in decisions))
    head = f"{'prompt':<{width}}  {'model':<{mw}} {'confidence':>10} {'margin':>7}  reason"
    lines = [head, "-" * len(head)]
    for label, d in zip(labels, decisions):
        short = label if len(label) <= width else label[: width - 3] + "..."
        margin = f"{d.margin:+.3f}" if d.margin is not None else "-"
        lines.append(f"{short:<{width}}  {d.model:<{mw}} {d.confidence:>10.3f} {margin:>7}  {d.reason}")
    return "\n".join(lines)


def cmd_route(args: argparse.Namespace) -> int:
    requests, labels = _route_requests(args)
    router = _load(args, 1)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    decisions = router.predict_batch(requests, tags=[tags] * len(requests))
    if args.table:
        print(_table(labels, decisions))
        return 0
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
