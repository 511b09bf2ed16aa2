"""Per-user example construction: NIP sampling, truncation, determinism (no Beam)."""

from pipelines.user_examples import build_user_examples, split_of
from qrec_tf import schema as S

SCHEMA = S.Schema(history_length=4, max_queries=3, max_query_words=2, nip_positives=3,
                  nip_negatives=2)


def make(seed=0, user=9):
    # 20 feed interactions, every other one a click, items 100..119 at t = 10, 20, ...
    rec = [(10 * (i + 1), 100 + i, i % 2) for i in range(20)]
    search = [(15, 1, (1, 2, 3), 500, 1), (15, 1, (1, 2, 3), 501, 0), (55, 2, (4,), 502, 0),
              (95, 3, (5, 6), 503, 0), (135, 4, (7,), 504, 1)]
    return list(build_user_examples(user, rec, search, (1, 2, 0, 3), {}, SCHEMA, seed))


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
