"""One user's logs -> that user's feed examples (pure Python, no Beam: the unit under test).

Rules (docs/PAPER.md "Data protocol", docs/ARCHITECTURE.md "Data and inputs"):
- Feed (rec) interactions are sorted by (timestamp, item_id, click), so the result does not depend
  on the order rows arrived in. Leave-one-out: the last interaction is `test`, the second last
  `valid`, all others `train`.
- Point in time: the example at time t sees only feed clicks and search sessions with timestamp
  strictly before t (ties with t are excluded, in both directions).
- History: the last `history_length` feed-clicked items before t, oldest first, left-padded.
- Queries: the last `max_queries` search sessions before t, one entry per session (a repeated search
  is a signal), ordered by (timestamp, search_session_id), left-padded. A session's query is the
  keyword of its earliest row.
- Per-query clicks: aligned with the queries, the distinct items clicked in each query's search
  session, ascending item id, the first `query_clicked_items`, right-padded. The log dates a click
  only by its session, so a session's clicks count as events of the session's time.
- Per-query time and results: aligned with the queries, the session's timestamp
  (`query_timestamps`) and the first- and second-level category that most of the session's
  shown items belong to (`query_category_ids`, `query_subcategory_ids`; each level counted on
  its own over the shown rows whose item has features, a tie going to the smaller id; PAD_ID when
  no shown item has features). Padding slots hold PAD_ID.
- NIP targets (train examples only): clicked (positives) and shown-but-not-clicked (negatives) feed
  items of the user's *train* interactions strictly after t, never an item of the user's valid or
  test interaction. When there are more than `nip_positives` (`nip_negatives`), a uniform sample
  without replacement is drawn with a generator seeded by (seed, user_id); chosen targets keep
  their chronological order and are right-padded. Valid and test examples carry none.
- Search examples (`search_examples=True`, for multi-task models such as PLE): one example per
  search impression row (an item shown in a session) whose session time t is strictly before the
  user's first held-out feed interaction (`training_period_end`: the valid one, or the test one of
  a user with a single feed interaction), so no search label from the evaluation period is ever
  trained on. Label = clicked in search, domain = SEARCH_DOMAIN, the same user and item features,
  history and queries strictly before t (the impression's own session is never among its queries),
  no NIP targets. Feed examples have domain = FEED_DOMAIN.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import random
from typing import Iterable, Iterator, Mapping, Sequence

from pipelines.kuaisar import MISSING, query_key
from qrec_tf import schema as S

RecRow = tuple[int, int, int]                          # (timestamp_ms, item_id, click)
SearchRow = tuple[int, int, tuple[int, ...], int, int]  # (ts, session_id, words, item_id, clicked)
ItemFeatures = tuple[int, int, int]                    # (author_id, category_id, subcategory_id)
NO_ITEM_FEATURES: ItemFeatures = (MISSING, MISSING, MISSING)
NO_USER_FEATURES = (MISSING, MISSING, MISSING, MISSING)


@dataclasses.dataclass(frozen=True)
class Session:
    timestamp: int
    session_id: int
    words: tuple[int, ...]
    key: str


def sessions_of(search_rows: Iterable[SearchRow]) -> list[Session]:
    """Collapses search rows (one per shown item) into sessions sorted by (time, session id)."""
    first: dict[int, SearchRow] = {}
    for row in search_rows:
        seen = first.get(row[1])
        if seen is None or row < seen:
            first[row[1]] = row
    sessions = [Session(ts, sid, words, query_key(words))
                for ts, sid, words, _, _ in first.values()]
    sessions.sort(key=lambda s: (s.timestamp, s.session_id))
    return sessions


def split_of(position: int, count: int) -> str:
    """Leave-one-out split of the feed interaction at `position` (0-based) among `count`."""
    if position == count - 1:
        return "test"
    if position == count - 2:
        return "valid"
    return "train"


def _left_pad(values: Sequence, length: int, pad) -> list:
    values = list(values[-length:])
    return [pad] * (length - len(values)) + values


def _right_pad(values: Sequence, length: int, pad) -> list:
    values = list(values[:length])
    return values + [pad] * (length - len(values))


def _sample_in_order(rng: random.Random, values: Sequence[int], k: int) -> list[int]:
    """k of `values` uniformly without replacement, in their original order."""
    n = len(values)
    if n <= k:
        return list(values)
    if n < 4 * k:
        chosen = rng.sample(range(n), k)
    else:  # rejection sampling: ~k draws instead of random.sample's bookkeeping
        picked: set[int] = set()
        while len(picked) < k:
            picked.add(int(rng.random() * n))
        chosen = picked
    return [values[i] for i in sorted(chosen)]


class _Timeline:
    """A user's feed clicks and search sessions, and the history and query features at a time t
    (events strictly before t).

    Consecutive calls whose window did not change return the same list objects (which
    `schema.ExampleSerializer` then encodes once); callers must not mutate them.
    """

    def __init__(self, rec: Sequence[RecRow], search: Sequence[SearchRow],
                 item_features: Mapping[int, ItemFeatures], schema: S.Schema):
        self._h, self._q = schema.history_length, schema.max_queries
        clicked = [(ts, item) for ts, item, click in rec if click]
        self._clicked_ts = [ts for ts, _ in clicked]
        self._clicked_items = [item for _, item in clicked]
        feats = [item_features.get(item, NO_ITEM_FEATURES) for item in self._clicked_items]
        self._clicked_cats = [f[1] for f in feats]
        self._clicked_subs = [f[2] for f in feats]
        sessions = sessions_of(search)
        self._session_ts = [s.timestamp for s in sessions]
        self._session_keys = [s.key for s in sessions]
        w, c = schema.max_query_words, schema.query_clicked_items
        self._session_words = [_right_pad(s.words, w, S.PAD_ID) for s in sessions]
        clicks = clicked_items_by_session(search)
        self._session_clicks = [_right_pad(clicks.get(s.session_id, ()), c, S.PAD_ID)
                                for s in sessions]
        results = result_categories_by_session(search, item_features)
        self._session_categories = [results.get(s.session_id, NO_RESULT_CATEGORIES)
                                    for s in sessions]
        self._no_words, self._no_clicks = [S.PAD_ID] * w, [S.PAD_ID] * c
        self._hist_end = self._query_end = -1
        self._features: dict = {}

    def at(self, t: int) -> dict:
        """{history and query feature name: value} of an impression at time t."""
        out = self._features
        end = bisect.bisect_left(self._clicked_ts, t)
        if end != self._hist_end:
            self._hist_end, start, h = end, max(0, end - self._h), self._h
            out[S.HIST_ITEM_IDS] = _left_pad(self._clicked_items[start:end], h, S.PAD_ID)
            out[S.HIST_CATEGORY_IDS] = _left_pad(self._clicked_cats[start:end], h, S.PAD_ID)
            out[S.HIST_SUBCATEGORY_IDS] = _left_pad(self._clicked_subs[start:end], h, S.PAD_ID)
        end = bisect.bisect_left(self._session_ts, t)
        if end != self._query_end:
            self._query_end, start, q = end, max(0, end - self._q), self._q
            out[S.QUERY_KEYS] = _left_pad(self._session_keys[start:end], q, S.PAD_KEY.decode())
            out[S.QUERY_WORD_IDS] = [v for row in _left_pad(self._session_words[start:end], q,
                                                            self._no_words) for v in row]
            out[S.QUERY_CLICKED_ITEM_IDS] = [
                v for row in _left_pad(self._session_clicks[start:end], q, self._no_clicks)
                for v in row]
            out[S.QUERY_TIMESTAMPS] = _left_pad(self._session_ts[start:end], q, S.PAD_ID)
            categories = _left_pad(self._session_categories[start:end], q, NO_RESULT_CATEGORIES)
            out[S.QUERY_CATEGORY_IDS] = [c for c, _ in categories]
            out[S.QUERY_SUBCATEGORY_IDS] = [s for _, s in categories]
        return out


def clicked_items_by_session(search_rows: Iterable[SearchRow]) -> dict[int, list[int]]:
    """{search session id: the distinct items clicked in it, ascending}; sessions without a click
    are absent."""
    clicks: dict[int, set] = collections.defaultdict(set)
    for _, session_id, _, item, clicked in search_rows:
        if clicked:
            clicks[session_id].add(item)
    return {sid: sorted(items) for sid, items in clicks.items()}


NO_RESULT_CATEGORIES = (MISSING, MISSING)


def _most_common(counts: collections.Counter) -> int:
    """The most counted value, the smaller one on a tie; MISSING when there is none."""
    return min(counts, key=lambda value: (-counts[value], value)) if counts else MISSING


def result_categories_by_session(search_rows: Iterable[SearchRow],
                                 item_features: Mapping[int, ItemFeatures]
                                 ) -> dict[int, tuple[int, int]]:
    """{search session id: (the first-level, the second-level category most of its shown items
    belong to)}: where a query's results lie, also for a session without a click. Rows whose
    item has no features (or a missing category) do not vote."""
    votes: dict[int, tuple[collections.Counter, collections.Counter]] = {}
    for _, session_id, _, item, _ in search_rows:
        _, category, subcategory = item_features.get(item, NO_ITEM_FEATURES)
        first, second = votes.setdefault(session_id,
                                         (collections.Counter(), collections.Counter()))
        if category != MISSING:
            first[category] += 1
        if subcategory != MISSING:
            second[subcategory] += 1
    return {sid: (_most_common(first), _most_common(second))
            for sid, (first, second) in votes.items()}


def training_period_end(rec_rows: Sequence[RecRow]) -> int | None:
    """The time of the user's first held-out (valid, else test) feed interaction: the user's
    training period is every t strictly before it. `rec_rows` sorted; None when empty."""
    if not rec_rows:
        return None
    return rec_rows[max(len(rec_rows) - 2, 0)][0]


def build_user_examples(
    user_id: int,
    rec_rows: Iterable[RecRow],
    search_rows: Iterable[SearchRow],
    user_features: Sequence[int] | None,
    item_features: Mapping[int, ItemFeatures],
    schema: S.Schema,
    seed: int = 0,
    search_examples: bool = False,
    time_split: tuple[int, ...] | None = None,
) -> Iterator[tuple[str, dict]]:
    """Yields (split, features) for each of the user's feed interactions, in time order, then
    with `search_examples` ("search_train", features) for each search impression of the user's
    training period, in (time, session id, item id) order.

    `features` maps every schema feature name to its value at the schema's exact size (scalars as
    ints, sequences as lists, query_word_ids and query_clicked_item_ids as flat lists of queries x
    words / items). Consecutive examples whose history (or queries) did not change share the same
    list objects, which `schema.ExampleSerializer` exploits; callers must not mutate them.
    """
    rec = sorted(rec_rows)
    search = sorted(search_rows)
    n = len(rec)
    if n == 0:
        return
    # Leave-one-out, or with `time_split` (valid_from_ms, test_from_ms; build_tfrecords
    # --split-by time) by the impression's time: train before valid_from, test from test_from.
    splits = ([split_of(position, n) for position in range(n)] if time_split is None else
              ["train" if t < time_split[0] else "valid" if t < time_split[1] else "test"
               for t, _, _ in rec])
    n_train = splits.count("train")   # a prefix: rec is in time order
    # A third value (build_tfrecords --train-from): training impressions before it are no
    # examples, only the history of later ones, so a window of days sees the earlier clicks.
    train_from = time_split[2] if time_split is not None and len(time_split) > 2 else None
    held_out = {item for _, item, _ in rec[n_train:]}
    timeline = _Timeline(rec, search, item_features, schema)

    # Candidates for NIP targets: train interactions on items that are not held out.
    pos_ts, pos_items, neg_ts, neg_items = [], [], [], []
    for ts, item, click in rec[:n_train]:
        if item in held_out:
            continue
        (pos_ts if click else neg_ts).append(ts)
        (pos_items if click else neg_items).append(item)
    no_pos = [S.PAD_ID] * schema.nip_positives
    no_neg = [S.PAD_ID] * schema.nip_negatives

    rng = random.Random(f"{seed}:{user_id}")
    u_feats = tuple(user_features) if user_features is not None else NO_USER_FEATURES
    user = {S.USER_ID: user_id, S.SEARCH_ACTIVE_LEVEL: u_feats[0],
            S.REC_ACTIVE_LEVEL: u_feats[1], S.ONEHOT_FEAT1: u_feats[2], S.ONEHOT_FEAT2: u_feats[3]}

    def impression(t: int, item: int, click: int, domain: int) -> dict:
        author, category, subcategory = item_features.get(item, NO_ITEM_FEATURES)
        return {**user, **timeline.at(t), S.LABEL: click, S.TIMESTAMP: t, S.DOMAIN: domain,
                S.ITEM_ID: item, S.AUTHOR_ID: author, S.CATEGORY_ID: category,
                S.SUBCATEGORY_ID: subcategory}

    for position, (t, item, click) in enumerate(rec):
        split = splits[position]
        if train_from is not None and t < train_from:
            continue
        if split == "train":
            nip_pos = _right_pad(_sample_in_order(rng, pos_items[bisect.bisect_right(pos_ts, t):],
                                                  schema.nip_positives),
                                 schema.nip_positives, S.PAD_ID)
            nip_neg = _right_pad(_sample_in_order(rng, neg_items[bisect.bisect_right(neg_ts, t):],
                                                  schema.nip_negatives),
                                 schema.nip_negatives, S.PAD_ID)
        else:
            nip_pos, nip_neg = no_pos, no_neg
        yield split, {**impression(t, item, click, S.FEED_DOMAIN),
                      S.NIP_POS_ITEM_IDS: nip_pos, S.NIP_NEG_ITEM_IDS: nip_neg}

    if search_examples:
        end = training_period_end(rec) if time_split is None else time_split[0]
        for t, _, _, item, clicked in search:
            if t >= end:
                break
            if train_from is not None and t < train_from:
                continue
            yield S.SEARCH_TRAIN, {**impression(t, item, clicked, S.SEARCH_DOMAIN),
                                   S.NIP_POS_ITEM_IDS: no_pos, S.NIP_NEG_ITEM_IDS: no_neg}


@dataclasses.dataclass
class QueryItems:
    """Partial query -> items statistics; merged across users by the Beam job."""

    words: tuple[int, ...]
    clicks: collections.Counter   # item_id -> number of clicks after this query
    shown: set                    # item_ids shown after this query
    sessions: int

    def merge(self, other: "QueryItems") -> "QueryItems":
        self.clicks.update(other.clicks)
        self.shown |= other.shown
        self.sessions += other.sessions
        return self


def query_items_of(search_rows: Iterable[SearchRow]) -> dict[str, QueryItems]:
    """One user's search rows -> {query_key: QueryItems}."""
    rows = list(search_rows)
    sessions = sessions_of(rows)
    by_key: dict[str, QueryItems] = {}
    for session in sessions:
        entry = by_key.get(session.key)
        if entry is None:
            by_key[session.key] = QueryItems(session.words, collections.Counter(), set(), 1)
        else:
            entry.sessions += 1
    key_of_session = {s.session_id: s.key for s in sessions}
    for _, sid, _, item, clicked in rows:
        entry = by_key[key_of_session[sid]]
        entry.shown.add(item)
        if clicked:
            entry.clicks[item] += 1
    return by_key
