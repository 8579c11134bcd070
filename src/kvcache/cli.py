"""The ``kvcache`` command.

- ``kvcache demo``: graceful degradation, shown live: traffic through a cache while Redis is
  refused, then partitioned, then back (``demo.py``).
- ``kvcache doctor``: can this process use its Redis, and if not, where does it fail
  (``doctor.py``). Exit status 0 when healthy, 1 when not, 2 for unusable settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from . import __version__
from .errors import ConfigurationError


def doctor(url: str | None, as_json: bool, samples: int) -> int:
    from .doctor import diagnose
    from .settings import KVCacheSettings

    # The report says what the cache's own log lines would (a WARNING per failed connect).
    logger = logging.getLogger("kvcache")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        settings = KVCacheSettings(url=url) if url else KVCacheSettings()
        settings.cache_options()  # the serializer and its key, checked before any I/O
        report = diagnose(settings, samples=samples)
    except (ValidationError, ConfigurationError) as exc:
        print(f"kvcache doctor: unusable settings: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.setLevel(level)
    print(report.to_json() if as_json else report.render())
    return 0 if report.healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kvcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="show graceful degradation through Redis outages")
    demo.add_argument(
        "--duration", type=float, default=30.0, help="seconds (default 30; at least 5)"
    )
    demo.add_argument(
        "--url", help='a redis:// to cut off through a local proxy (its "demo:*" keys are cleared)'
    )
    demo.add_argument("--workers", type=int, default=4, help="threads driving traffic")
    demo.add_argument("--plot", metavar="PNG", help="write the timeline as a picture (matplotlib)")

    check = commands.add_parser("doctor", help="diagnose the Redis these settings name")
    check.add_argument("--url", help="the Redis to diagnose (default: KVCACHE_URL)")
    check.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    check.add_argument("--samples", type=int, default=50, help="PINGs for the latency figures")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main_args

        return main_args(args)
    return doctor(args.url, args.json, args.samples)


if __name__ == "__main__":
    sys.exit(main())
