"""What every command-line tool shares, so each rule is written once: argparse value types and
the logging setup (every console script builds its parser in `build_parser()`)."""

from __future__ import annotations

import argparse
import logging
import math

from router_model.cost import parse_price_as

LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str = "warning", *, timestamps: bool = False) -> None:
    """The one logging setup of every console script: servers log with timestamps, batch tools without."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt)


HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def quiet_http_client_logs() -> None:
    """Keep httpx (one INFO line per request) and httpcore at WARNING, so a server logs nothing per
    request on its success path. Left alone when the root logger is at DEBUG (debugging wants them)
    or when a logger's level was set explicitly (an embedding application's choice)."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in HTTP_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def non_negative_number(text: str) -> float:
    """A finite number >= 0; `_` and `,` thousands separators are accepted (1_000_000, 1,000,000)."""
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def open_share(text: str) -> float:
    """A number strictly between 0 and 1 (a share, a risk)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def whole_number(text: str, *, minimum: int = 0) -> int:
    """An integer >= `minimum`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, minimum=1)


def price_as_arg(text: str) -> tuple[str, str]:
    """`NAME=PRICED`: cost a model without a price as a priced one (router_model.cost.parse_price_as)."""
    try:
        return parse_price_as(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_price_options(parser: argparse.ArgumentParser, *, price_as_default: str = "") -> None:
    """--prices FILE and --price-as NAME=PRICED, spelled the same in every tool that turns tokens into dollars
    (router_model.cost.PriceTable: --prices, then --price-as, then genai-prices, then the packaged table)."""
    parser.add_argument("--prices", default=None, metavar="FILE",
                        help="price table JSON overriding genai-prices and the packaged router_model/prices.json "
                        "(same layout as the packaged one, merged by model name)")
    parser.add_argument("--price-as", action="append", type=price_as_arg, default=[], metavar="NAME=PRICED",
                        help="cost NAME as the priced model PRICED, e.g. my-ft=gpt-4o-mini (repeatable); beats "
                        "genai-prices' own price of NAME"
                        + (f"; {price_as_default}" if price_as_default else ""))
