"""The draws of pipelines.synthetic: the world (topics, words, query pools, items, tastes), the
search sessions and the feed impressions, as numpy arrays; rows.py turns them into cells."""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.regimes import (
    CTR_CAP,
    FEED_ALPHA,
    ITEM_ID_BASE,
    ITEM_ZIPF,
    ON_TOPIC_CLICK_WEIGHT,
    ON_TOPIC_SHARE,
    SEARCH_ALPHA,
    START_MS,
    SUBTOPIC_ALPHA,
    TWO_CLICK_PROB,
    WORDS_PER_SUBTOPIC,
    Regime,
)


# --- small vectorised helpers --------------------------------------------------------------------
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
class World:
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
        self.draw_query = _grouped_sampler(self.query_sub,
                                           _zipf_weights(self.query_sub, regime.query_zipf))

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
        self.item_creator = None
        if regime.effect == "creator":
            self._creators(rng, regime.creators_per_subtopic)

    def _creators(self, rng: np.random.Generator, per_subtopic: int) -> None:
        """Creators (the "creator" effect): `per_subtopic` per sub-topic, every item made by one
        of its sub-topic's creators, creator popularity Zipf within the sub-topic, and one name
        query per creator from words of its own (after every sub-topic's words)."""
        n_subtopics = len(self.words)
        self.creator_sub = np.repeat(np.arange(n_subtopics), per_subtopic)
        n_creators = len(self.creator_sub)
        self.item_creator = (self.item_sub * per_subtopic
                             + rng.integers(0, per_subtopic, len(self.item_sub)))
        self.creator_ids = 1 + rng.choice(100 * n_creators, n_creators, replace=False)
        self.draw_creator = _grouped_sampler(self.creator_sub,
                                             _zipf_weights(self.creator_sub, 1.0))
        order = np.argsort(self.item_creator, kind="stable")
        draw_position = _grouped_sampler(self.item_creator[order],
                                         np.ones(len(order), np.float64))
        self.draw_creator_item = lambda creators, rng: order[draw_position(creators, rng)]
        first_word = int(self.words.max()) + 1
        names = (first_word + rng.permutation(2 * n_creators)).reshape(n_creators, 2)
        self.creator_query = len(self.queries) + np.arange(n_creators)
        self.queries.extend(tuple(int(w) for w in name) for name in names)
        self.query_sub = np.concatenate([self.query_sub, self.creator_sub])


def search_log(world: World, rng: np.random.Generator, sessions_per_user: np.ndarray,
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
    sess_creator = np.full(n_sess, -1)
    if world.item_creator is not None:  # a share of the sessions search a creator by name
        by_name = rng.random(n_sess) < world.regime.creator_query_share
        sess_creator = np.where(by_name, world.draw_creator(sess_sub, rng), -1)
        sess_query = np.where(by_name, world.creator_query[np.maximum(sess_creator, 0)],
                              sess_query)

    row_sess = np.repeat(np.arange(n_sess), sess_shown)
    n_rows = len(row_sess)
    on_topic = rng.random(n_rows) < ON_TOPIC_SHARE
    row_item = np.where(on_topic, world.draw_item(sess_sub[row_sess], rng),
                        rng.integers(0, len(world.item_ids), n_rows))
    if world.item_creator is not None:  # a creator search shows mostly the creator's videos
        row_creator = sess_creator[row_sess]
        by_creator = (row_creator >= 0) & (rng.random(n_rows) < ON_TOPIC_SHARE)
        row_item = np.where(by_creator, world.draw_creator_item(np.maximum(row_creator, 0), rng),
                            row_item)

    # Clicks: weighted sampling without replacement within a session (Efraimidis-Spirakis keys:
    # the largest u^(1/w) win), done for all sessions at once with one sort.
    clicks_wanted = np.where(rng.random(n_sess) < world.regime.no_click_session_prob, 0,
                             1 + (rng.random(n_sess) < TWO_CLICK_PROB))
    relevant = world.item_sub[row_item] == sess_sub[row_sess]
    if world.item_creator is not None:
        row_creator = sess_creator[row_sess]
        relevant = np.where(row_creator >= 0, world.item_creator[row_item] == row_creator,
                            relevant)
    weight = np.where(relevant, ON_TOPIC_CLICK_WEIGHT, 1.0)
    key = rng.random(n_rows) ** (1.0 / weight)
    by_key = np.lexsort((-key, row_sess))
    first_row = np.concatenate([[0], np.cumsum(sess_shown)[:-1]])
    rank = np.empty(n_rows, dtype=np.int64)
    rank[by_key] = np.arange(n_rows) - first_row[row_sess[by_key]]
    row_click = (rank < clicks_wanted[row_sess]).astype(np.int64)

    return dict(sess_user=sess_user, sess_time=sess_time, sess_sub=sess_sub, sess_query=sess_query,
                sess_source=sess_source, sess_creator=sess_creator,
                sess_clicked=clicks_wanted > 0, row_sess=row_sess, row_item=row_item,
                row_click=row_click)


def rec_log(world: World, rng: np.random.Generator, rec_per_user: np.ndarray, span_ms: int,
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
    if regime.effect == "creator":  # after a creator search the feed follows the creator
        followed = search["sess_creator"][last]
        by_creator = follow & (followed >= 0)
        item = np.where(by_creator, world.draw_creator_item(np.maximum(followed, 0), rng), item)

    # The recency effect: did this user search the item's sub-topic (or, for "creator", its
    # creator) in the window before t (in any session, not only the last)? The last session with
    # the same (user, sub-topic or creator) decides.
    if regime.effect == "creator":
        n_groups, sess_group = len(world.creator_sub), search["sess_creator"]
        item_group = world.item_creator[item]
    else:
        n_groups, sess_group, item_group = regime.subtopics, sess_sub, world.item_sub[item]
    pair = sess_user.astype(np.int64) * n_groups + sess_group
    pair = np.where(sess_group >= 0, pair, -1)   # topic searches say nothing of a creator
    target = user.astype(np.int64) * n_groups + item_group
    hit, found = _last_before(pair, sess_time, target, ts)
    age_ms = ts - sess_time[hit]
    recent = found & (age_ms <= window_ms)
    strength = np.full(n, regime.recency_boost)
    if regime.effect == "unmet_need":  # a need met in search does not come back to the feed
        strength = np.where(search["sess_clicked"][hit], regime.satisfied_boost, strength)
    boost = strength * recent
    if regime.recency_half_life_hours is not None:
        boost = boost * 0.5 ** (age_ms / (regime.recency_half_life_hours * 3_600_000))

    p = regime.feed_ctr_floor + regime.feed_ctr_range * world.feed_affinity[
        user, world.item_first[item]]
    p = np.clip(p + boost, 0.0, CTR_CAP)
    click = (rng.random(n) < p).astype(np.int64)
    return dict(user=user, ts=ts, item=item, click=click, recent=recent, follow=follow,
                probability=p)
