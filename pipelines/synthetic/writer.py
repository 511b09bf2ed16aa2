"""generate(): the draws (world.py) -> the rows (rows.py) -> the four CSV files and the manifest,
byte-identical for the same arguments."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip as gzip_module
import io
import itertools
import json
import os
from typing import Any, Iterator, Sequence

import numpy as np

from pipelines import kuaisar
from pipelines.synthetic.regimes import (
    CTR_CAP,
    DEFAULT_ITEMS,
    DEFAULT_SEED,
    DEFAULT_USERS,
    FEED_ALPHA,
    ITEM_ZIPF,
    ON_TOPIC_CLICK_WEIGHT,
    ON_TOPIC_SHARE,
    REC_ONLY_SHARE,
    REGIMES,
    SEARCH_ALPHA,
    SEARCH_ONLY_SHARE,
    SPAN_DAYS,
    START_MS,
    SUBTOPIC_ALPHA,
    TWO_CLICK_PROB,
    WORDS_PER_SUBTOPIC,
    ArgumentError,
    Regime,
    validate,
)
from pipelines.synthetic.rows import (
    BAD_KINDS,
    Columns,
    item_columns,
    plan_bad_rows,
    rec_columns,
    src_columns,
    user_columns,
)
from pipelines.synthetic.world import World, rec_log, search_log

MANIFEST = "synthetic_manifest.json"
_DAY_MS = 24 * 3600 * 1000


# --- writing -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_text(path: str, gzip: bool) -> Iterator[io.TextIOBase]:
    """Text handle; gzip without file name or mtime in its header, so output is byte-identical."""
    if not gzip:
        with open(path, "w", encoding="utf-8", newline="") as f:
            yield f
        return
    with open(path, "wb") as raw, \
            gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                 compresslevel=6) as packed, \
            io.TextIOWrapper(packed, encoding="utf-8", newline="") as text:
        yield text


def _write_csv(path: str, header: Sequence[str], columns: Columns,
               bad: list[tuple[int, list[str], str]], gzip: bool) -> None:
    """Header, then the good rows with the bad ones inserted at their planned data-line indices."""
    good: Iterator[tuple[str, ...]] = zip(*columns)
    with _open_text(path, gzip) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        written = 0
        for position, row, _ in bad:
            writer.writerows(itertools.islice(good, position - written))
            writer.writerow(row)
            written = position + 1
        writer.writerows(good)


# --- entry points --------------------------------------------------------------------------------
def generate(output_dir: str, users: int = DEFAULT_USERS, items: int = DEFAULT_ITEMS,
             seed: int = DEFAULT_SEED, bad_rows: int = 0,
             rec_per_user: int | None = None, sessions_per_user: int | None = None,
             gzip: bool = False, search_feed_mix: float | None = None,
             queries_per_subtopic: int | None = None,
             regime: str | Regime = "default") -> dict[str, Any]:
    """Writes the four KuaiSAR-format files and the manifest into output_dir; returns the manifest.

    `regime`: a name of REGIMES or a Regime; the per-user counts, the search-feed mix and the
    query pool default to the regime's (arguments that are not None override them).
    Raises ArgumentError for unsupported arguments (see validate()).
    """
    if isinstance(regime, str):
        if regime not in REGIMES:
            raise ArgumentError(f"--regime must be one of {sorted(REGIMES)} (got {regime!r})")
        regime_name, regime = regime, REGIMES[regime]
    else:
        regime_name = "custom"
    overrides = dict(rec_per_user=rec_per_user, sessions_per_user=sessions_per_user,
                     search_feed_mix=search_feed_mix, queries_per_subtopic=queries_per_subtopic)
    regime = dataclasses.replace(regime, **{k: v for k, v in overrides.items() if v is not None})
    rec_per_user, sessions_per_user = regime.rec_per_user, regime.sessions_per_user
    validate(users, items, seed, bad_rows, rec_per_user, sessions_per_user,
             regime.search_feed_mix, regime.queries_per_subtopic, regime.subtopics)
    # Independent streams: the bad-row stream must not shift the good data.
    data_seed, bad_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(data_seed)
    span_ms = SPAN_DAYS * _DAY_MS
    world = World(rng, users, items, regime)

    # Who has which log: a small share of users lacks one of the two (the pipeline drops them).
    # Kept >= 1 each when there are enough users, always leaving users with both.
    n_rec_only = int(round(REC_ONLY_SHARE * users))
    n_src_only = int(round(SEARCH_ONLY_SHARE * users))
    if users >= 3:
        n_rec_only, n_src_only = max(1, n_rec_only), max(1, n_src_only)
    role = rng.permutation(users)
    rec_only = np.zeros(users, dtype=np.bool_)
    rec_only[role[:n_rec_only]] = True
    src_only = np.zeros(users, dtype=np.bool_)
    src_only[role[n_rec_only:n_rec_only + n_src_only]] = True

    sessions = np.where(rec_only, 0, np.maximum(1, rng.poisson(sessions_per_user, users)))
    recs = np.where(src_only, 0, np.maximum(min(3, rec_per_user), rng.poisson(rec_per_user, users)))
    search = search_log(world, rng, sessions, span_ms)
    rec = rec_log(world, rng, recs, span_ms, search)

    user_ids = np.arange(1, users + 1)
    columns = {
        kuaisar.REC_INTER: rec_columns(world, rng, rec, user_ids),
        kuaisar.SRC_INTER: src_columns(world, rng, search, user_ids),
        kuaisar.USER_FEATURES: user_columns(rng, user_ids, sessions, recs, sessions_per_user,
                                             rec_per_user),
        kuaisar.ITEM_FEATURES: item_columns(world, rng),
    }
    plan = plan_bad_rows(np.random.default_rng(bad_seed), bad_rows, columns)

    os.makedirs(output_dir, exist_ok=True)
    suffix = ".csv.gz" if gzip else ".csv"
    files = {}
    for name in kuaisar.LOG_FILES:
        files[name] = name + suffix
        # A stale copy in the other format would make the Beam job refuse the directory
        # ("both rec_inter.csv and rec_inter.csv.gz exist").
        stale = os.path.join(output_dir, name + (".csv" if gzip else ".csv.gz"))
        if os.path.exists(stale):
            os.remove(stale)
        _write_csv(os.path.join(output_dir, files[name]), kuaisar.COLUMNS[name], columns[name],
                   plan[name], gzip)

    arguments = dict(users=users, items=items, seed=seed, bad_rows=bad_rows,
                     rec_per_user=rec_per_user, sessions_per_user=sessions_per_user, gzip=gzip,
                     regime=regime_name)
    manifest = _manifest(arguments, rec_only, src_only, world, search, rec, columns, plan, files)
    with open(os.path.join(output_dir, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def _manifest(arguments: dict[str, Any], rec_only: np.ndarray, src_only: np.ndarray,
              world: World, search: dict[str, np.ndarray], rec: dict[str, np.ndarray],
              columns: dict[str, Columns], plan: dict[str, list[tuple[int, list[str], str]]],
              files: dict[str, str]) -> dict[str, Any]:
    """The manifest: arguments, counts, bad lines and planted parameters (JSON-serialisable)."""
    bad_lines = [{"file": file, "line_number": pos + 2, "kind": kind}  # +1 header, +1 1-based
                 for file in kuaisar.LOG_FILES for pos, _, kind in plan[file]]
    sess_clicks = np.bincount(search["row_sess"], weights=search["row_click"],
                              minlength=len(search["sess_user"]))
    on_topic = world.item_sub[search["row_item"]] == search["sess_sub"][search["row_sess"]]
    recent, click = rec["recent"], rec["click"]

    def mean(values: np.ndarray) -> float | None:
        return round(float(values.mean()), 4) if len(values) else None

    return {
        # The output directory is left out so that manifests of equal runs are equal too.
        "arguments": arguments,
        "files": files,
        "rows": {f: len(columns[f][0]) + len(plan[f]) for f in kuaisar.LOG_FILES},
        "bad_rows": {f: len(plan[f]) for f in kuaisar.LOG_FILES},
        "bad_rows_by_kind": {k: sum(1 for b in bad_lines if b["kind"] == k) for k in BAD_KINDS},
        "bad_lines": bad_lines,
        "users": {
            "total": len(rec_only),
            "rec_only": int(rec_only.sum()),
            "search_only": int(src_only.sum()),
            "both": int(len(rec_only) - rec_only.sum() - src_only.sum()),
        },
        "search_sessions": int(len(search["sess_user"])),
        "distinct_queries_used": int(len(np.unique(search["sess_query"]))),
        "planted": {
            "first_level_categories": world.regime.first_level_categories,
            "subtopics_per_first_level": world.regime.subtopics_per_first,
            "subtopics": world.regime.subtopics,
            "first_level_category_ids": world.first_ids.tolist(),
            "second_level_category_ids": world.second_ids.tolist(),
            "words_per_subtopic": WORDS_PER_SUBTOPIC,
            "query_pool_size": len(world.queries),
            "query_zipf": world.regime.query_zipf,
            "item_zipf": ITEM_ZIPF,
            "feed_alpha": FEED_ALPHA,
            "search_alpha": SEARCH_ALPHA,
            "search_feed_mix": world.search_feed_mix,
            "subtopic_alpha": SUBTOPIC_ALPHA,
            "shown_per_session": list(world.regime.shown_per_session),
            "on_topic_share": ON_TOPIC_SHARE,
            "no_click_session_prob": world.regime.no_click_session_prob,
            "two_click_prob": TWO_CLICK_PROB,
            "on_topic_click_weight": ON_TOPIC_CLICK_WEIGHT,
            "follow_search_prob": world.regime.follow_search_prob,
            "feed_ctr_floor": world.regime.feed_ctr_floor,
            "feed_ctr_range": world.regime.feed_ctr_range,
            "recency_window_ms": int(world.regime.recency_window_hours * 3_600_000),
            "recency_boost": world.regime.recency_boost,
            "recency_half_life_hours": world.regime.recency_half_life_hours,
            "effect": world.regime.effect,
            "creators_per_subtopic": world.regime.creators_per_subtopic,
            "creator_query_share": world.regime.creator_query_share,
            "satisfied_boost": world.regime.satisfied_boost,
            "ctr_cap": CTR_CAP,
            "rec_only_share": REC_ONLY_SHARE,
            "search_only_share": SEARCH_ONLY_SHARE,
            "start_ms": START_MS,
            "span_days": SPAN_DAYS,
        },
        # What the draws produced (the tests re-measure these from the files themselves).
        "realised": {
            "feed_ctr": mean(click),
            "feed_ctr_recent_search": mean(click[recent]),
            "feed_ctr_other": mean(click[~recent]),
            "recent_search_impression_share": mean(recent),
            "follow_search_impression_share": mean(rec["follow"]),
            "no_click_session_share": mean(sess_clicks == 0),
            "search_on_topic_share": mean(on_topic),
        },
    }
