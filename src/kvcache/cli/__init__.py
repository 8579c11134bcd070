"""The ``kvcache`` command.

- ``kvcache demo``: graceful degradation, shown live: traffic through a cache while Redis is
  refused, then partitioned, then back (``demo.py``).
- ``kvcache doctor``: can this process use its Redis, and if not, where does it fail
  (``doctor.py``). Exit status 0 when healthy, 1 when not, 2 for unusable settings.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

from kvcache import __version__
from kvcache.errors import ConfigurationError


def run_doctor(url: str | None, as_json: bool, samples: int) -> int:
    from kvcache.cli.doctor import diagnose
    from kvcache.settings import KVCacheSettings

    # The report says what the cache's own log lines would (a WARNING per failed connect).
    logger = logging.getLogger("kvcache")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        settings = KVCacheSettings(url=url) if url else KVCacheSettings()
        settings.cache_options()  # the serializer and its key, checked before any I/O
        report = diagnose(settings, samples=samples)
    except ConfigurationError as exc:
        print(f"kvcache doctor: unusable settings: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.setLevel(level)
    print(report.to_json() if as_json else report.render())
    return 0 if report.healthy else 1


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--workers 0`` would drive no traffic at all)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kvcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="show graceful degradation through Redis outages")
    demo.add_argument(
        "--duration", type=_positive_seconds, default=30.0, help="seconds (default 30; at least 5)"
    )
    demo.add_argument(
        "--url", help='a redis:// to cut off through a local proxy (its "demo:*" keys are cleared)'
    )
    demo.add_argument("--workers", type=_positive_int, default=4, help="threads driving traffic")
    demo.add_argument("--plot", metavar="PNG", help="write the timeline as a picture (matplotlib)")

    check = commands.add_parser("doctor", help="diagnose the Redis these settings name")
    check.add_argument("--url", help="the Redis to diagnose (default: KVCACHE_URL)")
    check.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    check.add_argument(
        "--samples", type=_positive_int, default=50, help="PINGs for the latency figures"
    )

    args = parser.parse_args(argv)
    if args.command == "demo":
        from kvcache.cli.demo import main_args

        return main_args(args)
    return run_doctor(args.url, args.json, args.samples)
