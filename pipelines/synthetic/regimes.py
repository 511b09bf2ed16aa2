"""The planted parameters of pipelines.synthetic: module constants (the "default" regime), the
named regimes (`--regime`) and the validation of generate()'s arguments."""

from __future__ import annotations

import dataclasses

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
    query_zipf: float = QUERY_ZIPF
    rec_per_user: int = DEFAULT_REC_PER_USER
    sessions_per_user: int = DEFAULT_SESSIONS_PER_USER
    # How a search changes the feed (EFFECTS): "subtopic" (the searched sub-topic's items get
    # `recency_boost`), "creator" (only the searched creator's items do; `creator_query_share`
    # of the sessions search a creator by name) or "unmet_need" (the searched sub-topic gets
    # `recency_boost` after a session without a click and `satisfied_boost` after one with).
    effect: str = "subtopic"
    # "creator": creators per sub-topic (each item belongs to one), share of creator searches.
    creators_per_subtopic: int = 0
    creator_query_share: float = 0.0
    # "unmet_need": the effect of a search whose session had a click (negative: satiation).
    satisfied_boost: float = 0.0

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
    # Searches for creators: 60% of the sessions search a creator by name (creator-name words),
    # their results and clicks are mostly that creator's videos, and for two days after it the
    # user clicks more of that creator's videos in the feed (half-life 24 h), not of the
    # creator's whole sub-topic (+0.5 halving every 24 h; 30% of the feed impressions in the
    # window follow the search): a sub-topic count sees the creator's 1/12 of the sub-topic
    # among eleven others without an effect. Topic searches change nothing in the feed.
    "creator": Regime(effect="creator", creators_per_subtopic=12, creator_query_share=0.6,
                      recency_window_hours=48, recency_half_life_hours=24, recency_boost=0.5,
                      follow_search_prob=0.3, queries_per_subtopic=300),
    # Searches that leave a need: a long tail of queries (600 per sub-topic, Zipf 0.8: most
    # distinct queries are rare) and half the sessions without a click. A session without a
    # click leaves its need to the feed (its sub-topic's click probability +0.35, halving every
    # 24 h over 72 h); one with a click met the need (-0.1: satiation). Counts of search clicks
    # see only the sessions with the opposite effect; the query's words and results see both.
    "unmet_need": Regime(effect="unmet_need", no_click_session_prob=0.5, recency_boost=0.35,
                         satisfied_boost=-0.1, recency_window_hours=72,
                         recency_half_life_hours=24, queries_per_subtopic=600, query_zipf=0.8),
}
EFFECTS = ("subtopic", "creator", "unmet_need")


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

