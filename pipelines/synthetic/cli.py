"""Synthetic KuaiSAR-format logs with a planted search -> feed structure, for tests and demos.

The command line of pipelines.synthetic (`python -m pipelines.synthetic --help`).
"""

from __future__ import annotations

import argparse
import json
from typing import Callable, Sequence

from pipelines.synthetic import days as days_module
from pipelines.synthetic.regimes import (
    DEFAULT_ITEMS,
    DEFAULT_REC_PER_USER,
    DEFAULT_SEED,
    DEFAULT_SESSIONS_PER_USER,
    DEFAULT_USERS,
    QUERIES_PER_SUBTOPIC,
    REGIMES,
    SEARCH_FEED_MIX,
    ArgumentError,
)
from pipelines.synthetic.writer import generate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="directory for the four CSV files")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--bad-rows", type=int, default=0, help="malformed lines to inject")
    parser.add_argument("--regime", default="default", choices=sorted(REGIMES),
                        help="the planted structure (pipelines.synthetic.REGIMES): default; "
                             "sparse_feed (few feed impressions per user, fine topics, a "
                             "decaying search->feed effect); no_signal (search says nothing "
                             "about the feed); creator (creator-name searches raise that "
                             "creator's feed clicks only); unmet_need (a long query tail; a "
                             "click-less search raises its sub-topic's feed clicks, a "
                             "satisfied one lowers them). The options below override its values")
    parser.add_argument("--rec-per-user", type=int, default=None,
                        help=f"mean feed impressions per user (default {DEFAULT_REC_PER_USER})")
    parser.add_argument("--sessions-per-user", type=int, default=None,
                        help="mean search sessions per user "
                             f"(default {DEFAULT_SESSIONS_PER_USER})")
    parser.add_argument("--search-feed-mix", type=float, default=None,
                        help="share of the feed taste in the search taste: 1 = no interest "
                             f"shift, 0 = independent (default {SEARCH_FEED_MIX})")
    parser.add_argument("--queries-per-subtopic", type=int, default=None,
                        help="query pool per sub-topic (Zipf popularity): larger pools give more "
                             f"rare and click-less queries (default {QUERIES_PER_SUBTOPIC})")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    parser.add_argument("--days", type=int, default=None,
                        help="write this many consecutive days of one world (pipelines.synthetic"
                             ".days: new users and items every day, drifting popularity); "
                             "--users/--items are day 1's")
    parser.add_argument("--start-day", type=int, default=None,
                        help="first day written (1-based; default 1): day d's rows are the same "
                             "in every window that holds it")
    parser.add_argument("--new-share", type=float, default=days_module.DEFAULT_NEW_SHARE,
                        help="with --days: new users and items per day, as a share of day 1's "
                             "(default %(default)s)")
    parser.add_argument("--drift", type=float, default=days_module.DEFAULT_DRIFT,
                        help="with --days: daily step of the log item popularity random walk "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    if args.days is not None or args.start_day is not None:
        if args.bad_rows or any(v is not None for v in (
                args.rec_per_user, args.sessions_per_user, args.search_feed_mix,
                args.queries_per_subtopic)):
            parser.error("--days/--start-day take the regime's values: --bad-rows, "
                         "--rec-per-user, --sessions-per-user, --search-feed-mix and "
                         "--queries-per-subtopic are not supported with them")
        manifest = _written(parser, args.output, lambda: days_module.generate_days(
            args.output, 1 if args.days is None else args.days,
            1 if args.start_day is None else args.start_day, users=args.users,
            items=args.items, seed=args.seed, regime=args.regime, new_share=args.new_share,
            drift=args.drift, gzip=args.gzip))
        rows = ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items())
        print(f"wrote {args.output}: days {sorted(manifest['days'])}: {rows}")
        return 0
    manifest = _written(parser, args.output, lambda: generate(
        args.output, users=args.users, items=args.items, seed=args.seed,
        bad_rows=args.bad_rows, rec_per_user=args.rec_per_user,
        sessions_per_user=args.sessions_per_user, gzip=args.gzip,
        search_feed_mix=args.search_feed_mix, queries_per_subtopic=args.queries_per_subtopic,
        regime=args.regime))
    rows = ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items())
    print(f"wrote {args.output}: {rows}; realised {json.dumps(manifest['realised'])}")
    return 0


def _written(parser: argparse.ArgumentParser, output: str, write: Callable[[], dict]) -> dict:
    """The manifest of `write()`; its argument errors and unwritable outputs as one-line
    errors (argparse's exit codes), not tracebacks."""
    try:
        return write()
    except ArgumentError as error:
        parser.error(str(error))
    except OSError as error:
        parser.exit(1, f"{parser.prog}: error: cannot write to {output}: {error}\n")
