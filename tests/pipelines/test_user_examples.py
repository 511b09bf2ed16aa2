"""Per-user example construction: NIP sampling, truncation, determinism (no Beam)."""

from pipelines.user_examples import build_user_examples, split_of, training_period_end
from qrec_tf import schema as S

SCHEMA = S.Schema(history_length=4, max_queries=3, max_query_words=2, nip_positives=3,
                  nip_negatives=2, query_clicked_items=2)
P = S.PAD_ID


def make(seed=0, user=9, search_examples=False):
    # 20 feed interactions, every other one a click, items 100..119 at t = 10, 20, ...
    rec = [(10 * (i + 1), 100 + i, i % 2) for i in range(20)]
    search = [(15, 1, (1, 2, 3), 500, 1), (15, 1, (1, 2, 3), 501, 0), (55, 2, (4,), 502, 0),
              (95, 3, (5, 6), 503, 0), (135, 4, (7,), 504, 1)]
    return list(build_user_examples(user, rec, search, (1, 2, 0, 3), {}, SCHEMA, seed,
                                    search_examples))


def test_splits_and_truncation():
    examples = make()
    assert [s for s, _ in examples] == ["train"] * 18 + ["valid", "test"]
    _, last = examples[-1]  # t = 200: clicked items 101, 103, ..., 117 before it
    assert last[S.HIST_ITEM_IDS] == [111, 113, 115, 117]
    assert last[S.QUERY_KEYS] == ["4", "5_6", "7"]  # the first of four sessions is cut
    assert last[S.QUERY_WORD_IDS] == [4, -1, 5, 6, 7, -1]
    assert split_of(0, 1) == "test" and split_of(0, 2) == "valid" and split_of(0, 3) == "train"


def test_nip_samples_are_later_train_items_in_time_order_and_deterministic():
    first = make(seed=3)
    assert first == make(seed=3)
    assert first != make(seed=4)
    for split, ex in first:
        t = ex[S.TIMESTAMP]
        pos = [i for i in ex[S.NIP_POS_ITEM_IDS] if i != S.PAD_ID]
        neg = [i for i in ex[S.NIP_NEG_ITEM_IDS] if i != S.PAD_ID]
        if split != "train":
            assert pos == [] and neg == []
            continue
        later_train = [(10 * (i + 1), 100 + i, i % 2) for i in range(18) if 10 * (i + 1) > t]
        assert pos == sorted(pos) and neg == sorted(neg)  # items grow with time here
        assert set(pos) <= {item for _, item, c in later_train if c}
        assert set(neg) <= {item for _, item, c in later_train if not c}
        assert len(pos) == min(3, sum(c for *_, c in later_train))
        assert len(neg) == min(2, sum(1 - c for *_, c in later_train))


def test_per_query_clicks_are_aligned_with_the_queries():
    examples = make()
    _, at_20 = examples[1]    # only session 1 (t=15, clicked 500) is before t=20
    assert at_20[S.QUERY_KEYS] == ["", "", "1_2_3"]
    assert at_20[S.QUERY_CLICKED_ITEM_IDS] == [P, P, P, P, 500, P]
    _, last = examples[-1]    # sessions 2, 3, 4: only session 4 has a click (504)
    assert last[S.QUERY_CLICKED_ITEM_IDS] == [P, P, P, P, 504, P]
    # distinct items, ascending, the first query_clicked_items (2) of them
    search = [(5, 1, (3,), 9, 1), (5, 1, (3,), 7, 1), (5, 1, (3,), 7, 1), (5, 1, (3,), 8, 1),
              (5, 1, (3,), 6, 0), (6, 2, (4,), 6, 0)]
    (_, only), = build_user_examples(1, [(10, 100, 1)], search, None, {}, SCHEMA)
    assert only[S.QUERY_KEYS] == ["", "3", "4"]
    assert only[S.QUERY_CLICKED_ITEM_IDS] == [P, P, 7, 8, P, P]


def test_each_query_slot_has_its_session_time_and_result_categories():
    # Session 1 (t=5): shown items 7, 8, 9 with (category, sub-category) (1, 10), (2, 20),
    # (2, 21), and 6 without features: category 2 (two votes), sub-categories 10, 20, 21 one vote
    # each: the smallest, 10. Session 2 (t=6, no click): item 6 only, no features: PAD_ID.
    features = {7: (0, 1, 10), 8: (0, 2, 20), 9: (0, 2, 21)}
    search = [(5, 1, (3,), 9, 1), (5, 1, (3,), 7, 0), (5, 1, (3,), 8, 0), (5, 1, (3,), 6, 0),
              (6, 2, (4,), 6, 0)]
    (_, only), = build_user_examples(1, [(10, 100, 1)], search, None, features, SCHEMA)
    assert only[S.QUERY_KEYS] == ["", "3", "4"]
    assert only[S.QUERY_TIMESTAMPS] == [P, 5, 6]
    assert only[S.QUERY_CATEGORY_IDS] == [P, 2, P]
    assert only[S.QUERY_SUBCATEGORY_IDS] == [P, 10, P]
    assert only[S.TIMESTAMP] == 10
    # Left-padded and cut like the query keys: the last max_queries sessions before t.
    _, last = make()[-1]
    assert last[S.QUERY_TIMESTAMPS] == [55, 95, 135]


def test_search_examples_come_from_the_training_period_only():
    rec = [(10, 100, 1), (20, 101, 0), (30, 102, 1), (40, 103, 0)]   # valid at 30, test at 40
    search = [(5, 1, (1,), 500, 1), (20, 2, (2,), 502, 1), (20, 2, (2,), 501, 0),
              (30, 3, (3,), 503, 1), (35, 4, (4,), 504, 0)]
    features = {500: (7, 8, 9)}
    plain = list(build_user_examples(1, rec, search, None, features, SCHEMA))
    both = list(build_user_examples(1, rec, search, None, features, SCHEMA,
                                    search_examples=True))
    assert both[:4] == plain and {ex[S.DOMAIN] for _, ex in plain} == {S.FEED_DOMAIN}
    searched = both[4:]
    # t=30 is the valid interaction's time: not strictly before it, so not in the training period
    assert [(s, ex[S.TIMESTAMP], ex[S.ITEM_ID], ex[S.LABEL]) for s, ex in searched] == [
        (S.SEARCH_TRAIN, 5, 500, 1), (S.SEARCH_TRAIN, 20, 501, 0), (S.SEARCH_TRAIN, 20, 502, 1)]
    first, second, _ = (ex for _, ex in searched)
    assert first[S.DOMAIN] == second[S.DOMAIN] == S.SEARCH_DOMAIN
    assert (first[S.AUTHOR_ID], first[S.CATEGORY_ID], first[S.SUBCATEGORY_ID]) == (7, 8, 9)
    assert first[S.HIST_ITEM_IDS] == [P, P, P, P] and first[S.QUERY_KEYS] == ["", "", ""]
    # at t=20: the feed click at 10 and session 1 (at 5); its own session (at 20) is not a query
    assert second[S.HIST_ITEM_IDS] == [P, P, P, 100]
    assert second[S.QUERY_KEYS] == ["", "", "1"]
    assert second[S.QUERY_WORD_IDS] == [P, P, P, P, 1, P]
    assert second[S.QUERY_CLICKED_ITEM_IDS] == [P, P, P, P, 500, P]
    assert second[S.NIP_POS_ITEM_IDS] == [P] * 3 and second[S.NIP_NEG_ITEM_IDS] == [P] * 2


def test_training_period_ends_at_the_first_held_out_interaction():
    assert training_period_end([]) is None
    assert training_period_end([(10, 1, 1)]) == 10                      # test only
    assert training_period_end([(10, 1, 1), (20, 2, 0)]) == 10          # valid, test
    assert training_period_end([(10, 1, 1), (20, 2, 0), (30, 3, 1)]) == 20
