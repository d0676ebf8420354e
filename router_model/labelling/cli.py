"""`router-label`: run both models and the judge on a file of requests and append labelled-log rows.

The rows are the same as shadow grading writes (`grading.grade_request`), so `router-train --log
labels.jsonl` trains on them as is. Rows already in `--out` (or in its `.ungraded` file, unless
`--retry-ungraded`) are skipped by request hash, so an interrupted run is resumed by running the
same command again. Before starting it prints what the run should cost (two answers and two judge
calls per request, priced from the price table) and it never starts a request that could take the
spend over `--max-cost`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_model.cli_args import add_price_options, non_negative_number, positive_int, setup_logging, whole_number
from router_model.cost import DEFAULT_OUTPUT_TOKENS, PriceTable
from router_model.dollars import request_cost
from router_model.encoder import estimate_tokens
from router_model.errors import RouterError
from router_model.jsonl import LineError, decode_object, request_from_line, tags_from_line
from router_model.labelling.config import GradingSpec
from router_model.labelling.errors import LabellingConfigError, LabellingError
from router_model.labelling.judge import JUDGE_OUTPUT_TOKENS
from router_model.labelling.rubric import Reference, Rubric
from router_model.labelling.upstream import ChatCaller, RetryPolicy
from router_model.labelling.writer import LabelsWriter, existing_hashes, ungraded_path

log = logging.getLogger("router_model.labelling")
SOURCE = "router-label"
EXIT_COST_CAP = 3
MAX_LISTED = 10

EPILOG = """
The requests file is JSON lines: "prompt" (or "messages"), optional "tags", "id", "reference"
(expected answer, compared whitespace-normalised), "reference_regex", and "params" (extra chat
parameters such as temperature). A labelled log works too: its outcomes are ignored.

Exit status: 0 done, 2 bad input or options, 3 stopped at --max-cost (run again with a higher cap to go on).

router-label split --log labels.jsonl --eval-out eval.jsonl --train-out labels-train.jsonl: carve an evaluation
log out of a labelled log with no prompt shared with the rest (router-label split --help).
"""


@dataclass(frozen=True)
class _Item:
    line_no: int
    request: Any  # LabelRequest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="router-label",
        description="Label requests for router-train: answer each with both models, grade both answers with the "
        "rubric (checks + LLM judge), append one labelled-log row per request.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", required=True, type=Path, metavar="FILE", help="JSONL file of requests")
    p.add_argument("--upstream", required=True, metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    p.add_argument("--models", required=True, metavar="CHEAP,STRONG", help="the two models to label, cheap first")
    p.add_argument("--judge", metavar="MODEL", help="judge model (same upstream); without one, outcomes come from the checks only")
    p.add_argument("--rubric", type=Path, metavar="FILE",
                   help="judge prompt template with {{question}} and {{answer}} (default: the shipped 1-10 single-answer rubric)")
    p.add_argument("--check", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="extra check: a callable (request, response) -> True | False | 'reason' (repeatable)")
    p.add_argument("--json-schema", type=Path, metavar="FILE", help="a JSON Schema every answer must parse into")
    p.add_argument("--no-checks", action="store_true", help="skip the escalation checks (refusal, empty, length, JSON, tool arguments)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="labels file to append to (created mode 0600)")
    p.add_argument("--concurrency", type=positive_int, default=4, metavar="N", help="requests in flight (default: %(default)s)")
    p.add_argument("--max-cost", type=non_negative_number, metavar="USD", help="stop before the spend could pass USD")
    p.add_argument("--estimate-only", action="store_true", help="print the cost estimate and exit")
    p.add_argument("--retries", type=whole_number, default=4, metavar="N",
                   help="retries of a call answered 429/5xx or timed out (default: %(default)s)")
    p.add_argument("--timeout", type=non_negative_number, default=120.0, metavar="S", help="seconds per call (default: %(default)s)")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the upstream key (default: OPENAI_API_KEY when set)")
    p.add_argument("--retry-ungraded", action="store_true", help="label again the requests in the .ungraded file")
    p.add_argument("--no-answers", action="store_true", help="do not store the answers in the rows")
    p.add_argument("--logprobs", action="store_true",
                   help="ask the cheap model for token log-probabilities and keep them in the rows, for the answer "
                   "score (chat completions' `logprobs`; off by default)")
    p.add_argument("--output-tokens", type=positive_int, default=DEFAULT_OUTPUT_TOKENS, metavar="N",
                   help="answer tokens assumed by the estimate (default: %(default)s)")
    add_price_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def read_requests(path: Path) -> list[_Item]:
    """Every request of the file, validated; one LabellingError listing each bad line (file:line: field: reason)."""
    from router_model.labelling.grading import LabelRequest

    items: list[_Item] = []
    problems: list[str] = []
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise LabellingError(f"cannot read the requests file {str(path)!r}: {exc}") from None
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                obj = decode_object(raw, first_line=line_no == 1)
                if obj is None:
                    continue
                request, _ = request_from_line(obj)
                tags = tags_from_line(obj) or ()
                ref = {k: obj.get(k) for k in ("reference", "reference_regex")}
                for key, value in ref.items():
                    if value is not None and not isinstance(value, str):
                        raise LineError("bad_field", key, f"expected a string, got {type(value).__name__}")
                params = obj.get("params") or {}
                if not isinstance(params, dict) or {"model", "messages", "stream"} & set(params):
                    raise LineError("bad_field", "params", "expected an object of chat parameters without model/messages/stream")
                rid = obj.get("id")
                if rid is not None and (not isinstance(rid, str) or not rid):
                    raise LineError("bad_field", "id", f"expected a non-empty string, got {rid!r}")
            except LineError as exc:
                problems.append(f"{path}:{line_no}: {exc}")
                continue
            messages = [{"role": "user", "content": request}] if isinstance(request, str) else list(request)
            reference = Reference(ref["reference"], ref["reference_regex"]) if any(ref.values()) else None
            items.append(_Item(line_no, LabelRequest(body={**params, "messages": messages}, tags=tuple(tags),
                                                     reference=reference, id=rid)))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise LabellingError(f"{len(problems)} bad line(s) in the requests file:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    if not items:
        raise LabellingError(f"{path}: no requests in the file")
    return items


def estimate_cost(request: Any, models: Sequence[str], judge: str | None, prices: PriceTable, *, template_tokens: int,
                  output_tokens: int) -> float:
    """Dollars one request should cost: an answer per model, and a judge call per answer."""
    from router_model.labelling.rubric import conversation_text

    text = conversation_text(request.body["messages"])
    inp = estimate_tokens(text)
    total = 0.0
    for model in models:
        total += float(request_cost(prices.price(model), inp, output_tokens))
        if judge is not None:
            total += float(request_cost(prices.price(judge), template_tokens + inp + output_tokens, JUDGE_OUTPUT_TOKENS))
    return total


class _Run:
    """The labelling loop: bounded concurrency, the cost cap, progress, counts."""

    def __init__(self, args: argparse.Namespace, rubric: Rubric, prices: PriceTable, models: tuple[str, str]) -> None:
        self.args, self.rubric, self.prices, self.models = args, rubric, prices, models
        self.spent = 0.0
        self.reserved = 0.0
        self.labelled = self.ungraded = self.failed = 0
        self.stopped = False

    async def run(self, todo: list[tuple[_Item, float]]) -> None:
        import httpx
        from tqdm import tqdm

        from router_model.labelling.grading import grade_request

        args = self.args
        base = args.upstream.rstrip("/")
        key_env = args.api_key_env or ("OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else None)
        headers: dict[str, str] = {}
        if key_env:
            if key_env not in os.environ:
                raise LabellingConfigError(f"the environment variable {key_env!r} is not set", key="--api-key-env")
            headers["authorization"] = f"Bearer {os.environ[key_env]}"
        limits = httpx.Limits(max_connections=2 * args.concurrency, max_keepalive_connections=2 * args.concurrency)
        writer = LabelsWriter(args.out)
        ungraded: LabelsWriter | None = None
        bar = tqdm(total=len(todo), unit="req", disable=args.no_progress, desc="labelling", file=sys.stderr)
        try:
            async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
                caller = ChatCaller(lambda: client, url_for=lambda m: f"{base}/chat/completions",
                                    headers_for=lambda m: dict(headers), prices=self.prices,
                                    retry=RetryPolicy(retries=args.retries))
                slots = asyncio.Semaphore(args.concurrency)
                tasks: set[asyncio.Task[None]] = set()

                async def one(item: _Item, estimate: float) -> None:
                    nonlocal ungraded
                    try:
                        graded = await grade_request(caller, self.rubric, item.request, self.models, source=SOURCE,
                                                     logprobs_for=self.models[0] if args.logprobs else None)
                        row = graded.to_row(store_answers=not args.no_answers)
                        row["metadata"]["requests_line"] = item.line_no
                        if graded.complete:
                            writer.write(row)
                            self.labelled += 1
                        else:
                            if ungraded is None:
                                ungraded = LabelsWriter(ungraded_path(args.out))
                            ungraded.write(row)
                            self.ungraded += 1
                        self.spent += graded.labelling_cost or 0.0
                    except Exception:  # noqa: BLE001 - one broken request must not end the run
                        log.exception("request on line %d failed", item.line_no)
                        self.failed += 1
                    finally:
                        self.reserved -= estimate
                        slots.release()
                        bar.update(1)
                        bar.set_postfix_str(f"${self.spent:.4f}")

                for item, estimate in todo:
                    await slots.acquire()
                    cap = args.max_cost
                    if cap is not None and self.spent + self.reserved + estimate > cap:
                        slots.release()
                        self.stopped = True
                        break
                    self.reserved += estimate
                    task = asyncio.ensure_future(one(item, estimate))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
        finally:
            bar.close()
            writer.close()
            if ungraded is not None:
                ungraded.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["split"]:  # router-label split: carve an eval log out of a labelled log
        from router_model.labelling.split_cli import main as split_main

        return split_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    try:
        names = tuple(m.strip() for m in args.models.split(",") if m.strip())
        if len(names) != 2 or names[0] == names[1]:
            parser.error(f"--models: expected two different names CHEAP,STRONG, got {args.models!r}")
        models: tuple[str, str] = (names[0], names[1])
        if args.logprobs and args.no_answers:
            parser.error("--logprobs keeps the cheap answers' token log-probabilities beside the answers; "
                         "it cannot go with --no-answers")
        prices = PriceTable.load(args.prices, price_as=dict(args.price_as))
        for model in (*models, *([args.judge] if args.judge else [])):
            prices.price(model)  # an unpriced model is refused here, naming the fix
        schema = None
        if args.json_schema is not None:
            import json

            try:
                schema = json.loads(args.json_schema.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise LabellingConfigError(f"cannot read {str(args.json_schema)!r}: {exc}", key="--json-schema") from None
        checks = {name: False for name in ("json", "json_schema", "length", "empty", "refusal", "tool_arguments")} if args.no_checks else {}
        rubric = Rubric(GradingSpec(judge=args.judge, rubric=args.rubric, checks=checks, custom_checks=tuple(args.check),
                                    json_schema=schema))
        items = read_requests(args.requests)
        seen = existing_hashes(args.out)
        if not args.retry_ungraded:
            seen |= existing_hashes(ungraded_path(args.out))
        template_tokens = estimate_tokens(rubric.template) if args.judge else 0
        todo: list[tuple[_Item, float]] = []
        duplicates = 0
        for item in items:
            h = item.request.hash
            if h in seen:
                duplicates += 1
                continue
            seen.add(h)
            todo.append((item, estimate_cost(item.request, models, args.judge, prices, template_tokens=template_tokens,
                                             output_tokens=args.output_tokens)))
        total = sum(e for _, e in todo)
        calls = 2 + (2 if args.judge else 0)
        print(f"router-label: {len(items)} requests, {duplicates} already labelled (or repeated), {len(todo)} to label; "
              f"estimated cost ${total:.4f} ({calls} calls per request: {'two answers + two judge calls' if args.judge else 'two answers'}; "
              f"input ceil(chars/4) tokens, {args.output_tokens} output tokens per answer; prices: {prices.describe()})",
              file=sys.stderr)
        if args.max_cost is not None and total > args.max_cost:
            print(f"router-label: the estimate is above --max-cost ${args.max_cost:.4f}: stopping before the cap", file=sys.stderr)
        if args.estimate_only or not todo:
            return 0
        run = _Run(args, rubric, prices, models)
        asyncio.run(run.run(todo))
    except RouterError as exc:
        print(f"router-label: error: {exc}", file=sys.stderr)
        return 2
    left = len(todo) - run.labelled - run.ungraded - run.failed
    print(f"router-label: {run.labelled} labelled, {run.ungraded} without an outcome (-> {ungraded_path(args.out)}), "
          f"{run.failed} failed; spent ${run.spent:.4f}" + (f"; stopped at --max-cost with {left} left" if run.stopped else ""),
          file=sys.stderr)
    return EXIT_COST_CAP if run.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
