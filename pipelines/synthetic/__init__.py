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

Modules: regimes.py (the planted constants, `Regime`, `REGIMES`, argument validation), world.py
(the draws: topics, tastes, query pools, search sessions, feed impressions), rows.py (the files'
columns in KuaiSAR's formats, the malformed lines), writer.py (`generate`: files and manifest),
cli.py (`main`).
"""

from pipelines.synthetic.cli import main
from pipelines.synthetic.regimes import (
    CTR_CAP,
    DEFAULT_ITEMS,
    DEFAULT_REC_PER_USER,
    DEFAULT_SEED,
    DEFAULT_SESSIONS_PER_USER,
    DEFAULT_USERS,
    FEED_ALPHA,
    FEED_CTR_FLOOR,
    FEED_CTR_RANGE,
    FOLLOW_SEARCH_PROB,
    ITEM_ID_BASE,
    ITEM_ZIPF,
    N_FIRST,
    N_SUBTOPICS,
    NO_CLICK_SESSION_PROB,
    ON_TOPIC_CLICK_WEIGHT,
    ON_TOPIC_SHARE,
    QUERIES_PER_SUBTOPIC,
    QUERY_ZIPF,
    REC_ONLY_SHARE,
    RECENCY_BOOST,
    RECENCY_WINDOW_MS,
    REGIMES,
    SEARCH_ALPHA,
    SEARCH_FEED_MIX,
    SEARCH_ONLY_SHARE,
    SHOWN_MAX,
    SHOWN_MIN,
    SPAN_DAYS,
    START_MS,
    SUBTOPIC_ALPHA,
    SUBTOPICS_PER_FIRST,
    TWO_CLICK_PROB,
    WORDS_PER_SUBTOPIC,
    ArgumentError,
    Regime,
    validate,
)
from pipelines.synthetic.rows import BAD_KEYWORDS, BAD_KINDS, EMPTY_REQUIRED_COLUMN
from pipelines.synthetic.writer import MANIFEST, generate

__all__ = [
    "CTR_CAP", "DEFAULT_ITEMS", "DEFAULT_REC_PER_USER", "DEFAULT_SEED", "DEFAULT_SESSIONS_PER_USER",
    "DEFAULT_USERS", "FEED_ALPHA", "FEED_CTR_FLOOR", "FEED_CTR_RANGE", "FOLLOW_SEARCH_PROB",
    "ITEM_ID_BASE", "ITEM_ZIPF", "N_FIRST", "N_SUBTOPICS", "NO_CLICK_SESSION_PROB",
    "ON_TOPIC_CLICK_WEIGHT", "ON_TOPIC_SHARE", "QUERIES_PER_SUBTOPIC", "QUERY_ZIPF",
    "REC_ONLY_SHARE", "RECENCY_BOOST", "RECENCY_WINDOW_MS", "REGIMES", "SEARCH_ALPHA",
    "SEARCH_FEED_MIX", "SEARCH_ONLY_SHARE", "SHOWN_MAX", "SHOWN_MIN", "SPAN_DAYS", "START_MS",
    "SUBTOPIC_ALPHA", "SUBTOPICS_PER_FIRST", "TWO_CLICK_PROB", "WORDS_PER_SUBTOPIC",
    "ArgumentError", "Regime", "validate", "BAD_KEYWORDS", "BAD_KINDS", "EMPTY_REQUIRED_COLUMN",
    "MANIFEST", "generate", "main",
]
