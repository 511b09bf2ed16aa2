"""Synthetic KuaiSAR-format logs with a planted search -> feed structure, for tests and demos.

    python -m pipelines.synthetic --output DIR [--users 300] [--items 2000] [--seed 0]
        [--bad-rows K] [--rec-per-user 40] [--sessions-per-user 8] [--search-feed-mix 0.25]
        [--gzip]

Writes rec_inter.csv, src_inter.csv, user_features.csv, item_features.csv (`.csv.gz` with --gzip)
with KuaiSAR's exact columns (pipelines.kuaisar), plus synthetic_manifest.json describing what was
planted. Same arguments -> byte-identical files (gzip headers carry no name or mtime).

What is planted (the model is tested against it):
- Topics: N_FIRST first-level categories x SUBTOPICS_PER_FIRST sub-topics (= second-level
  categories). Every item has one sub-topic; each sub-topic owns a disjoint set of word ids, and
  captions and queries use only their sub-topic's words.
- Each user has a concentrated feed taste over first-level categories and a search taste over
  sub-topics that is *shifted*: it mixes only a little of the feed taste into an independent one
  (`--search-feed-mix`: 1 = search follows the feed taste, no shift; 0 = fully independent).
- Queries come from per-sub-topic pools (Zipf popularity, so query ids recur across users). A search
  session shows 8-12 items, ~80% from the query's sub-topic; ~40% of sessions have no click, the
  others click 1-2 items, preferring on-topic ones.
- Feed clicks depend on the feed taste for the item's first-level category, plus a clear recency
  boost when the user searched the item's sub-topic in the previous 24 h. Part of the feed follows
  the user's most recent search, so such impressions are common enough to matter.
- ~5% of users have feed rows only and ~2% search rows only (the pipeline must drop them).
- `--bad-rows K` adds K malformed lines (copies of good rows, corrupted) that the manifest lists.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gzip as gzip_module
import io
import itertools
import json
import os
import sys
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pipelines import kuaisar

# --- planted parameters (also written to the manifest) -------------------------------------------
N_FIRST = 8                    # first-level categories
SUBTOPICS_PER_FIRST = 4        # second-level categories per first-level one
N_SUBTOPICS = N_FIRST * SUBTOPICS_PER_FIRST
WORDS_PER_SUBTOPIC = 30        # disjoint word ids per sub-topic
QUERIES_PER_SUBTOPIC = 40      # query pool size per sub-topic (before de-duplication); KuaiSAR's
                               # long tail (175k queries for 26k users) needs generate(
                               # queries_per_subtopic=...) in the hundreds
QUERY_ZIPF = 1.0               # query popularity within a pool ~ 1 / rank^QUERY_ZIPF
ITEM_ZIPF = 0.8                # item popularity within a sub-topic ~ 1 / rank^ITEM_ZIPF
FEED_ALPHA = 0.25              # Dirichlet alpha of feed tastes: small = concentrated
SEARCH_ALPHA = 0.3             # Dirichlet alpha of the independent part of search tastes
SEARCH_FEED_MIX = 0.25         # default share of the feed taste in the search taste (the rest is
                               # shifted); generate(search_feed_mix=...) overrides it
SUBTOPIC_ALPHA = 0.6           # Dirichlet alpha of a user's search sub-topics within a category
SHOWN_MIN, SHOWN_MAX = 8, 12   # items shown per search session
ON_TOPIC_SHARE = 0.8           # shown items drawn from the query's sub-topic
NO_CLICK_SESSION_PROB = 0.4    # KuaiSAR: ~40% of search sessions have no click
TWO_CLICK_PROB = 0.3           # sessions with a click: 1 click, or 2 with this probability
ON_TOPIC_CLICK_WEIGHT = 4.0    # click preference for on-topic shown items
FOLLOW_SEARCH_PROB = 0.35      # feed impression taken from the user's last search (within 24 h)
FEED_CTR_FLOOR = 0.15          # click probability for a category the user has no taste for
FEED_CTR_RANGE = 0.45          # ... up to FLOOR + RANGE for the user's favourite category
RECENCY_WINDOW_MS = 24 * 3600 * 1000
RECENCY_BOOST = 0.35           # absolute click-probability boost after a search of the sub-topic
CTR_CAP = 0.95
REC_ONLY_SHARE = 0.05          # users with feed rows and no search rows
SEARCH_ONLY_SHARE = 0.02       # users with search rows and no feed rows
START_MS = 1_684_684_800_000   # 2023-05-22 00:00:00 Beijing time (KuaiSAR starts on that day)
SPAN_DAYS = 10
ITEM_ID_BASE = 100_000         # item ids are sparse, shuffled ints above this (never 0..N)

DEFAULT_USERS, DEFAULT_ITEMS, DEFAULT_SEED = 300, 2000, 0
DEFAULT_REC_PER_USER, DEFAULT_SESSIONS_PER_USER = 40, 8


@dataclasses.dataclass(frozen=True)
class Regime:
    """The planted structure of a log; `REGIMES` names the presets (`--regime`).

    The defaults are the module constants above (the "default" regime). Counts per user
    (`rec_per_user`, `sessions_per_user`) and the query pool are defaults that generate()'s
    arguments override.
    """

    first_level_categories: int = N_FIRST
    subtopics_per_first: int = SUBTOPICS_PER_FIRST
    shown_per_session: tuple[int, int] = (SHOWN_MIN, SHOWN_MAX)
    no_click_session_prob: float = NO_CLICK_SESSION_PROB
    follow_search_prob: float = FOLLOW_SEARCH_PROB
    feed_ctr_floor: float = FEED_CTR_FLOOR
    feed_ctr_range: float = FEED_CTR_RANGE
    recency_window_hours: float = RECENCY_WINDOW_MS / 3_600_000
    recency_boost: float = RECENCY_BOOST
    # None: the boost is a step (full strength through the window); else it halves every
    # `recency_half_life_hours` after the search (a time-decayed effect).
    recency_half_life_hours: float | None = None
    search_feed_mix: float = SEARCH_FEED_MIX
    queries_per_subtopic: int = QUERIES_PER_SUBTOPIC
    rec_per_user: int = DEFAULT_REC_PER_USER
    sessions_per_user: int = DEFAULT_SESSIONS_PER_USER

    @property
    def subtopics(self) -> int:
        return self.first_level_categories * self.subtopics_per_first


REGIMES: dict[str, Regime] = {
    # Today's log: 8 x 4 topics, ~40 feed impressions per user, 40% click-less sessions, a 24 h
    # step recency boost of search on the feed.
    "default": Regime(),
    # Like the independent log queryrec was checked on (docs/RESULTS.md, "Regimes"): few feed
    # impressions per user, fine topics (30 x 6), 10 results per session, nearly every query
    # with clicks, a boost on the searched sub-topic that decays over a day or two, taste shift.
    "sparse_feed": Regime(first_level_categories=30, subtopics_per_first=6,
                          shown_per_session=(10, 10), no_click_session_prob=0.1,
                          follow_search_prob=0.2, feed_ctr_floor=0.2, feed_ctr_range=0.45,
                          recency_window_hours=48, recency_boost=0.3,
                          recency_half_life_hours=24, queries_per_subtopic=30,
                          rec_per_user=30, sessions_per_user=8),
    # Search tells nothing about the feed: independent tastes, no recency boost, no feed rows
    # that follow a search. Queries still exist and still predict the search log itself.
    "no_signal": Regime(search_feed_mix=0.0, follow_search_prob=0.0, recency_boost=0.0),
}
MANIFEST = "synthetic_manifest.json"

BAD_KINDS = ("truncated", "non_numeric_id", "bad_keyword", "nul_byte", "empty_required")
BAD_KEYWORDS = ("[3, x]", "3, 4", "[]")
# The required cell blanked by "empty_required": one the parser does not treat as optional.
EMPTY_REQUIRED_COLUMN = {kuaisar.REC_INTER: "timestamp", kuaisar.SRC_INTER: "item_id",
                         kuaisar.USER_FEATURES: "user_id", kuaisar.ITEM_FEATURES: "item_id"}

_DAY_MS = 24 * 3600 * 1000
# One file's data as columns of cells (str, or int/float that the csv writer formats).
Columns = list[list[Any]]
_BEIJING_OFFSET_MS = 8 * 3600 * 1000


class ArgumentError(ValueError):
    """Arguments generate() cannot work with; main() reports them via argparse, not a traceback."""


def validate(users: int, items: int, seed: int, bad_rows: int, rec_per_user: int,
             sessions_per_user: int, search_feed_mix: float = SEARCH_FEED_MIX,
             queries_per_subtopic: int = QUERIES_PER_SUBTOPIC,
             subtopics: int = N_SUBTOPICS) -> None:
    """Raises ArgumentError with a readable message for arguments outside the supported range."""
    if users < 1:
        raise ArgumentError(f"--users must be >= 1 (got {users})")
    if items < subtopics:
        raise ArgumentError(f"--items must be >= {subtopics}, the number of sub-topics, so that "
                            f"every sub-topic has an item (got {items})")
    if seed < 0:
        raise ArgumentError(f"--seed must be >= 0 (got {seed})")
    if bad_rows < 0:
        raise ArgumentError(f"--bad-rows must be >= 0 (got {bad_rows})")
    if rec_per_user < 1:
        raise ArgumentError(f"--rec-per-user must be >= 1 (got {rec_per_user})")
    if sessions_per_user < 1:
        raise ArgumentError(f"--sessions-per-user must be >= 1 (got {sessions_per_user})")
    if not 0.0 <= search_feed_mix <= 1.0:  # also rejects NaN
        raise ArgumentError(f"--search-feed-mix must be in [0, 1] (got {search_feed_mix})")
    if queries_per_subtopic < 1:
        raise ArgumentError(f"--queries-per-subtopic must be >= 1 (got {queries_per_subtopic})")


# --- small vectorised helpers --------------------------------------------------------------------
def _cells(values: np.ndarray) -> list[Any]:
    """Column -> list of cells. Python ints/floats, not str: the csv writer formats them in C (as
    str() would: 1684742000000.0, 60792.0), which halves the time of a 1M-row file."""
    return values.tolist()


def _id_lists(lists: Iterable[Sequence[int]]) -> list[str]:
    """KuaiSAR's list-cell format, "[20, 34, 3]" (the csv writer quotes it)."""
    return ["[" + ", ".join(map(str, ids)) + "]" for ids in lists]


def _beijing_times(timestamps_ms: np.ndarray) -> list[str]:
    """Vectorised kuaisar.beijing_time: per-row datetime calls would dominate at 1M rows."""
    local = (timestamps_ms + _BEIJING_OFFSET_MS).astype("datetime64[ms]")
    text = np.datetime_as_string(local, unit="s").astype("S19")  # 2023-05-22T15:53:20
    raw = text.view(np.uint8).reshape(-1, 19)
    raw[:, 10] = ord(" ")
    return text.astype("U19").tolist()


def _sample_rows(cumulative: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per entry of `rows`, from the distribution cumulative[rows]."""
    u = rng.random(len(rows))
    return np.minimum((u[:, None] >= cumulative[rows]).sum(axis=1), cumulative.shape[1] - 1)


def _grouped_sampler(group_of: np.ndarray, weights: np.ndarray):
    """Sampler of members within groups: members sorted by group, weights relative in a group.

    Returns draw(groups, rng) -> member index, one per requested group, all groups vectorised:
    the cumulative weights of group g are laid out on [g, g + 1), so one searchsorted serves all.
    """
    n_groups = int(group_of.max()) + 1
    totals = np.bincount(group_of, weights=weights, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(np.bincount(group_of, minlength=n_groups))])
    within = np.cumsum(weights) - np.repeat(np.cumsum(totals) - totals, np.diff(starts))
    keys = group_of + within / totals[group_of]

    def draw(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        index = np.searchsorted(keys, groups + rng.random(len(groups)), side="right")
        # Float rounding at a group's upper edge must not spill into the next group.
        return np.clip(index, starts[groups], starts[groups + 1] - 1)

    return draw


def _last_before(group: np.ndarray, time: np.ndarray, query_group: np.ndarray,
                 query_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: index of the latest event of the same group strictly before query_time.

    Returns (index, found); index is 0 where nothing was found. One sort plus one searchsorted on
    (group << 32) + time offset, which orders by group, then time (offsets stay below 2^32 ms).
    """
    if not len(group):
        return (np.zeros(len(query_group), dtype=np.int64),
                np.zeros(len(query_group), dtype=np.bool_))
    order = np.lexsort((time, group))
    keys = (group[order].astype(np.int64) << 32) + (time[order] - START_MS)
    wanted = (query_group.astype(np.int64) << 32) + (query_time - START_MS)
    position = np.searchsorted(keys, wanted, side="left") - 1  # side=left: strictly earlier
    index = order[np.maximum(position, 0)]
    return index, (position >= 0) & (group[index] == query_group)


def _zipf_weights(group_of: np.ndarray, exponent: float) -> np.ndarray:
    """1 / rank^exponent within each group (members sorted by group)."""
    starts = np.searchsorted(group_of, group_of, side="left")
    rank = np.arange(len(group_of)) - starts + 1
    return 1.0 / rank ** exponent


# --- the world: topics, words, queries, items, users --------------------------------------------
class _World:
    """Everything drawn before any interaction: ids, topics, tastes, query pools."""

    def __init__(self, rng: np.random.Generator, users: int, items: int,
                 regime: Regime = Regime()):
        self.regime = regime
        n_first, per_first = regime.first_level_categories, regime.subtopics_per_first
        n_subtopics = regime.subtopics
        queries_per_subtopic = regime.queries_per_subtopic
        self.first_ids = np.sort(rng.choice(np.arange(1, 100), n_first, replace=False))
        # Second-level ids are globally unique (not 0..S-1 within each first-level category).
        self.second_ids = rng.choice(np.arange(100, 1000), n_subtopics, replace=False)
        self.first_of_sub = np.repeat(np.arange(n_first), per_first)

        # Disjoint word sets: a shuffled 1..V split into equal blocks.
        self.words = (rng.permutation(n_subtopics * WORDS_PER_SUBTOPIC) + 1).reshape(
            n_subtopics, WORDS_PER_SUBTOPIC)

        # Query pools: 1-4 distinct words of the sub-topic; duplicates within a pool collapse.
        queries: list[tuple[int, ...]] = []
        query_sub: list[int] = []
        lengths = rng.choice([1, 2, 3, 4], size=(n_subtopics, queries_per_subtopic),
                             p=[0.3, 0.35, 0.25, 0.1])
        for s in range(n_subtopics):
            pool = dict.fromkeys(  # insertion-ordered, so deterministic
                tuple(int(w) for w in rng.choice(self.words[s], n, replace=False))
                for n in lengths[s])
            queries.extend(pool)
            query_sub.extend([s] * len(pool))
        self.queries = queries
        self.query_sub = np.asarray(query_sub)
        self.query_keyword = _id_lists(queries)
        self.draw_query = _grouped_sampler(self.query_sub,
                                           _zipf_weights(self.query_sub, QUERY_ZIPF))

        # Items: every sub-topic gets at least one; indices are sorted by sub-topic.
        per_sub = 1 + rng.multinomial(items - n_subtopics, np.full(n_subtopics, 1 / n_subtopics))
        self.item_sub = np.repeat(np.arange(n_subtopics), per_sub)
        self.item_first = self.first_of_sub[self.item_sub]
        self.item_ids = ITEM_ID_BASE + rng.choice(50 * items, items, replace=False)
        self.item_duration = np.clip(np.round(np.exp(rng.normal(np.log(25_000), 0.8, items))),
                                     3_000, 600_000)
        self.draw_item = _grouped_sampler(self.item_sub, _zipf_weights(self.item_sub, ITEM_ZIPF))

        # Tastes. Feed: over first-level categories. Search: over sub-topics, mostly independent.
        self.feed_taste = rng.dirichlet(np.full(n_first, FEED_ALPHA), users)
        independent = rng.dirichlet(np.full(n_first, SEARCH_ALPHA), users)
        mix = self.search_feed_mix = float(regime.search_feed_mix)
        search_first = mix * self.feed_taste + (1 - mix) * independent
        within = rng.dirichlet(np.full(per_first, SUBTOPIC_ALPHA), (users, n_first))
        self.search_taste = (search_first[:, :, None] * within).reshape(users, n_subtopics)
        # Click propensity per category relative to the user's favourite, in [0, 1]; with the
        # floor/range above the overall feed CTR lands near KuaiSAR's ~0.5.
        self.feed_affinity = self.feed_taste / self.feed_taste.max(axis=1, keepdims=True)


def _search_log(world: _World, rng: np.random.Generator, sessions_per_user: np.ndarray,
                span_ms: int) -> dict[str, np.ndarray]:
    """Search sessions and their shown rows; sessions sorted by (user, time)."""
    users = len(sessions_per_user)
    sess_user = np.repeat(np.arange(users), sessions_per_user)
    n_sess = len(sess_user)
    sess_time = START_MS + rng.integers(0, span_ms, n_sess)
    order = np.lexsort((sess_time, sess_user))
    sess_user, sess_time = sess_user[order], sess_time[order]
    sess_sub = _sample_rows(np.cumsum(world.search_taste, axis=1), sess_user, rng)
    sess_query = world.draw_query(sess_sub, rng)
    shown_min, shown_max = world.regime.shown_per_session
    sess_shown = rng.integers(shown_min, shown_max + 1, n_sess)
    sess_source = rng.random(n_sess) < 0.75  # USER_INPUT, else RECOMMEND_QUERY

    row_sess = np.repeat(np.arange(n_sess), sess_shown)
    n_rows = len(row_sess)
    on_topic = rng.random(n_rows) < ON_TOPIC_SHARE
    row_item = np.where(on_topic, world.draw_item(sess_sub[row_sess], rng),
                        rng.integers(0, len(world.item_ids), n_rows))

    # Clicks: weighted sampling without replacement within a session (Efraimidis-Spirakis keys:
    # the largest u^(1/w) win), done for all sessions at once with one sort.
    clicks_wanted = np.where(rng.random(n_sess) < world.regime.no_click_session_prob, 0,
                             1 + (rng.random(n_sess) < TWO_CLICK_PROB))
    weight = np.where(world.item_sub[row_item] == sess_sub[row_sess], ON_TOPIC_CLICK_WEIGHT, 1.0)
    key = rng.random(n_rows) ** (1.0 / weight)
    by_key = np.lexsort((-key, row_sess))
    first_row = np.concatenate([[0], np.cumsum(sess_shown)[:-1]])
    rank = np.empty(n_rows, dtype=np.int64)
    rank[by_key] = np.arange(n_rows) - first_row[row_sess[by_key]]
    row_click = (rank < clicks_wanted[row_sess]).astype(np.int64)

    return dict(sess_user=sess_user, sess_time=sess_time, sess_sub=sess_sub, sess_query=sess_query,
                sess_source=sess_source, row_sess=row_sess, row_item=row_item, row_click=row_click)


def _rec_log(world: _World, rng: np.random.Generator, rec_per_user: np.ndarray, span_ms: int,
             search: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feed impressions with clicks; part of the feed follows recent searches."""
    users = len(rec_per_user)
    user = np.repeat(np.arange(users), rec_per_user)
    n = len(user)
    ts = START_MS + rng.integers(0, span_ms, n)

    # The user's most recent search session strictly before t.
    sess_user, sess_time, sess_sub = search["sess_user"], search["sess_time"], search["sess_sub"]
    last, found = _last_before(sess_user, sess_time, user, ts)
    regime = world.regime
    window_ms = regime.recency_window_hours * 3_600_000
    recent_search = found & (ts - sess_time[last] <= window_ms)

    # Feed-taste impressions: a first-level category by taste, a sub-topic uniformly within it;
    # some impressions instead follow the last search (the feed reacting to search interest).
    first = _sample_rows(np.cumsum(world.feed_taste, axis=1), user, rng)
    sub = first * regime.subtopics_per_first + rng.integers(0, regime.subtopics_per_first, n)
    follow = recent_search & (rng.random(n) < regime.follow_search_prob)
    sub = np.where(follow, sess_sub[last], sub)
    item = world.draw_item(sub, rng)

    # The recency effect: did this user search the item's sub-topic in the previous 24 h (in any
    # session, not only the last)? The last session with the same (user, sub-topic) decides.
    pair = sess_user.astype(np.int64) * regime.subtopics + sess_sub
    target = user.astype(np.int64) * regime.subtopics + world.item_sub[item]
    hit, found = _last_before(pair, sess_time, target, ts)
    age_ms = ts - sess_time[hit]
    recent = found & (age_ms <= window_ms)
    boost = regime.recency_boost * recent
    if regime.recency_half_life_hours is not None:
        boost = boost * 0.5 ** (age_ms / (regime.recency_half_life_hours * 3_600_000))

    p = regime.feed_ctr_floor + regime.feed_ctr_range * world.feed_affinity[
        user, world.item_first[item]]
    p = np.minimum(p + boost, CTR_CAP)
    click = (rng.random(n) < p).astype(np.int64)
    return dict(user=user, ts=ts, item=item, click=click, recent=recent, follow=follow)


# --- rows ---------------------------------------------------------------------------------------
def _rec_columns(world: _World, rng: np.random.Generator, rec: dict[str, np.ndarray],
                 user_ids: np.ndarray) -> Columns:
    """rec_inter's columns; engagement columns are plausible noise (only `click` is planted)."""
    n = len(rec["user"])
    # A real log is not sorted: group by user, shuffle within the user (deterministically).
    order = np.lexsort((rng.random(n), rec["user"]))
    user, ts, item, click = (rec[k][order] for k in ("user", "ts", "item", "click"))
    duration = world.item_duration[item]
    watched = np.where(click == 1, rng.uniform(0.3, 1.5, n), rng.uniform(0.02, 0.3, n))
    playing = np.round(duration * watched)

    def flag(p: float, only_clicked: bool = False) -> list[int]:
        """A 0/1 engagement column (forward/like/follow only happen on clicked rows)."""
        on = rng.random(n) < p
        return _cells((on & (click == 1) if only_clicked else on).astype(np.int64))

    return [
        _cells(user_ids[user]), _cells(world.item_ids[item]), _cells(playing), _cells(duration),
        # KuaiSAR writes the ms timestamp as a float ("1684742000000.0").
        _beijing_times(ts), _cells(ts.astype(np.float64)), _cells(click),
        flag(0.03, True), flag(0.15, True), flag(0.02, True), flag(0.03), flag(0.02),
    ]


def _src_columns(world: _World, rng: np.random.Generator, search: dict[str, np.ndarray],
                 user_ids: np.ndarray) -> Columns:
    """src_inter's columns: one row per shown item, a session's rows contiguous."""
    n_sess = len(search["sess_user"])
    session_ids = rng.permutation(n_sess) + 1  # globally unique, unrelated to time order
    # Sessions stay contiguous (rows of a session share id, time, keyword) but their order
    # within a user is shuffled.
    sess_order = np.lexsort((rng.random(n_sess), search["sess_user"]))
    position = np.empty(n_sess, dtype=np.int64)
    position[sess_order] = np.arange(n_sess)
    rows = np.argsort(position[search["row_sess"]], kind="stable")
    sess = search["row_sess"][rows]
    n = len(rows)
    sess_ts = search["sess_time"][sess]
    session_time = np.array(_beijing_times(search["sess_time"]), dtype=object)
    keyword = np.array(world.query_keyword, dtype=object)[search["sess_query"][sess]]
    source = np.where(search["sess_source"][sess], "USER_INPUT", "RECOMMEND_QUERY")
    item_type = np.where(rng.random(n) < 0.95, "VIDEO", "LIVE")
    return [
        _cells(user_ids[search["sess_user"][sess]]), _cells(session_ids[sess]),
        session_time[sess].tolist(), _cells(sess_ts), keyword.tolist(), source.tolist(),
        _cells(world.item_ids[search["row_item"][rows]]), _cells(search["row_click"][rows]),
        item_type.tolist(),
    ]


def _user_columns(rng: np.random.Generator, user_ids: np.ndarray, sessions: np.ndarray,
                  recs: np.ndarray, sessions_mean: int, rec_mean: int) -> Columns:
    """user_features' columns: every user, including those missing from one of the logs."""
    def level(count: np.ndarray, mean: int) -> np.ndarray:
        # 0 = inactive; 1-3 by activity relative to the mean (KuaiSAR's levels are small ints).
        return np.where(count == 0, 0, 1 + (count > mean) + (count > 1.5 * mean))

    n = len(user_ids)
    return [_cells(user_ids), _cells(level(sessions, sessions_mean)), _cells(level(recs, rec_mean)),
            _cells(rng.integers(0, 3, n)), _cells(rng.integers(0, 8, n))]


def _item_columns(world: _World, rng: np.random.Generator) -> Columns:
    """item_features' columns: topics, captions from the sub-topic's words, filler categories."""
    n = len(world.item_ids)
    order = np.argsort(world.item_ids)  # item_features sorted by id, unlike the topic layout
    sub = world.item_sub[order]
    first = world.item_first[order]
    caption_len = rng.integers(3, 11, n)
    caption_words = world.words[sub[:, None], rng.integers(0, WORDS_PER_SUBTOPIC, (n, 10))]
    captions = _id_lists(w[:k] for w, k in zip(caption_words.tolist(), caption_len.tolist()))
    upload = np.datetime64("2023-01-01") + rng.integers(0, 140, n).astype("timedelta64[D]")
    first_id, second_id = world.first_ids[first], world.second_ids[sub]
    third_id = 1000 + sub * 3 + rng.integers(0, 3, n)
    first_name = [f"cat{i}" for i in _cells(first_id)]
    second_name = [f"sub{i}" for i in _cells(second_id)]
    third_name = [f"t{i}" for i in _cells(third_id)]
    return [
        _cells(world.item_ids[order]), captions,
        _cells(1 + rng.integers(0, max(1, n // 4), n)),
        ["NORMAL"] * n, np.datetime_as_string(upload).tolist(),
        np.where(rng.random(n) < 0.7, "ShortImport", "LongImport").tolist(),
        _cells(first_id), first_name, first_name,
        _cells(second_id), second_name, second_name,
        _cells(third_id), third_name, third_name,
        ["0"] * n, ["UNKNOWN"] * n, ["UNKNOWN"] * n,
    ]


# --- malformed lines -----------------------------------------------------------------------------
def _corrupt(file: str, row: list[str], kind: str, serial: int) -> list[str]:
    """A malformed copy of a good row; kuaisar.LineParser must reject every kind."""
    row = [str(cell) for cell in row]
    names = kuaisar.COLUMNS[file]
    if kind == "truncated":
        return row[: max(1, len(row) // 2)]
    if kind == "non_numeric_id":
        row[0] = f"u{row[0]}x" if names[0] == "user_id" else f"i{row[0]}x"
    elif kind == "bad_keyword":
        row[names.index("keyword")] = BAD_KEYWORDS[serial % len(BAD_KEYWORDS)]
    elif kind == "nul_byte":
        middle = len(row) // 2
        row[middle] = row[middle][:1] + "\x00" + row[middle][1:]
    elif kind == "empty_required":
        row[names.index(EMPTY_REQUIRED_COLUMN[file])] = ""
    return row


def _plan_bad_rows(rng: np.random.Generator, bad_rows: int, columns: dict[str, Columns]
                   ) -> dict[str, list[tuple[int, list[str], str]]]:
    """Per file: (data-line index in the final file, corrupted row, kind), sorted by index.

    Bad lines are *added* copies, so the good lines are the same with or without --bad-rows.
    Kinds cycle; files cycle too, except that a bad keyword can only live in src_inter.
    """
    chosen: dict[str, list[tuple[list[str], str]]] = {f: [] for f in kuaisar.LOG_FILES}
    for j in range(bad_rows):
        kind = BAD_KINDS[j % len(BAD_KINDS)]
        file = (kuaisar.SRC_INTER if kind == "bad_keyword"
                else kuaisar.LOG_FILES[j % len(kuaisar.LOG_FILES)])
        cols = columns[file]
        source = int(rng.integers(0, len(cols[0])))
        chosen[file].append((_corrupt(file, [c[source] for c in cols], kind, j), kind))
    plan: dict[str, list[tuple[int, list[str], str]]] = {}
    for file, rows in chosen.items():
        total = len(columns[file][0]) + len(rows)
        positions = np.sort(rng.choice(total, len(rows), replace=False)).tolist()
        plan[file] = [(pos, row, kind) for pos, (row, kind) in zip(positions, rows)]
    return plan


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
    world = _World(rng, users, items, regime)

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
    search = _search_log(world, rng, sessions, span_ms)
    rec = _rec_log(world, rng, recs, span_ms, search)

    user_ids = np.arange(1, users + 1)
    columns = {
        kuaisar.REC_INTER: _rec_columns(world, rng, rec, user_ids),
        kuaisar.SRC_INTER: _src_columns(world, rng, search, user_ids),
        kuaisar.USER_FEATURES: _user_columns(rng, user_ids, sessions, recs, sessions_per_user,
                                             rec_per_user),
        kuaisar.ITEM_FEATURES: _item_columns(world, rng),
    }
    plan = _plan_bad_rows(np.random.default_rng(bad_seed), bad_rows, columns)

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
              world: _World, search: dict[str, np.ndarray], rec: dict[str, np.ndarray],
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
            "query_zipf": QUERY_ZIPF,
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
                             "about the feed). The options below override its values")
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
    args = parser.parse_args(argv)
    try:
        manifest = generate(args.output, users=args.users, items=args.items, seed=args.seed,
                            bad_rows=args.bad_rows, rec_per_user=args.rec_per_user,
                            sessions_per_user=args.sessions_per_user, gzip=args.gzip,
                            search_feed_mix=args.search_feed_mix,
                            queries_per_subtopic=args.queries_per_subtopic,
                            regime=args.regime)
    except ArgumentError as error:
        parser.error(str(error))
    except OSError as error:
        parser.exit(1, f"{parser.prog}: error: cannot write to {args.output}: {error}\n")
    rows = ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items())
    print(f"wrote {args.output}: {rows}; realised {json.dumps(manifest['realised'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
