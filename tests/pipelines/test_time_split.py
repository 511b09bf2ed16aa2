"""build_tfrecords --split-by time: train before the valid day, valid, then test, by time."""

import pytest

from pipelines import build_tfrecords
from pipelines.user_examples import build_user_examples
from qrec_tf import schema as S

SCHEMA = S.Schema(history_length=4, max_queries=3, max_query_words=2, nip_positives=3,
                  nip_negatives=3, query_clicked_items=2)


def test_examples_split_by_their_time_and_nip_targets_come_from_train_interactions_only():
    rec = [(10, 100, 1), (20, 101, 0), (30, 102, 1), (40, 103, 1), (50, 104, 0), (60, 105, 1)]
    search = [(5, 1, (4,), 100, 1)]
    examples = list(build_user_examples(1, rec, search, None, {}, SCHEMA,
                                        time_split=(35, 55), search_examples=True))
    feed = [(split, ex[S.TIMESTAMP]) for split, ex in examples if split != S.SEARCH_TRAIN]
    assert feed == [("train", 10), ("train", 20), ("train", 30), ("valid", 40), ("valid", 50),
                    ("test", 60)]
    first = examples[0][1]
    # NIP: train interactions after t (20: a non-click, 30: a click), never a held-out item
    assert first[S.NIP_POS_ITEM_IDS] == [102, S.PAD_ID, S.PAD_ID]
    assert first[S.NIP_NEG_ITEM_IDS] == [101, S.PAD_ID, S.PAD_ID]
    assert all(ex[S.NIP_POS_ITEM_IDS] == [S.PAD_ID] * 3 for split, ex in examples
               if split in ("valid", "test"))
    # the search example of the training period (before the valid day)
    assert [ex[S.TIMESTAMP] for split, ex in examples if split == S.SEARCH_TRAIN] == [5]
    # leave-one-out, the default, is unchanged
    loo = [s for s, _ in build_user_examples(1, rec, search, None, {}, SCHEMA)]
    assert loo == ["train"] * 4 + ["valid", "test"]


def test_train_until_is_a_beijing_day_and_the_flags_are_checked(capsys):
    args, _ = build_tfrecords.parse_args(["--input", "i", "--output", "o", "--split-by", "time",
                                          "--train-until", "2023-05-22", "--valid-days", "2"])
    # synthetic day 1 starts at 2023-05-22 00:00 Beijing (pipelines.synthetic START_MS)
    day = 24 * 3600 * 1000
    assert args.time_split == (1_684_684_800_000 + day, 1_684_684_800_000 + 3 * day)
    for argv in (["--split-by", "time"], ["--train-until", "2023-05-22"],
                 ["--split-by", "time", "--train-until", "22/05/2023"]):
        with pytest.raises(SystemExit):
            build_tfrecords.parse_args(["--input", "i", "--output", "o", *argv])
    assert "--train-until" in capsys.readouterr().err


def test_train_from_keeps_earlier_impressions_as_history_only():
    rec = [(10, 100, 1), (20, 101, 0), (30, 102, 1), (40, 103, 1), (50, 104, 0), (60, 105, 1)]
    search = [(5, 1, (4,), 100, 1), (28, 2, (4,), 102, 1)]
    examples = list(build_user_examples(1, rec, search, None, {}, SCHEMA,
                                        time_split=(35, 55, 25), search_examples=True))
    feed = [(split, ex[S.TIMESTAMP]) for split, ex in examples if split != S.SEARCH_TRAIN]
    assert feed == [("train", 30), ("valid", 40), ("valid", 50), ("test", 60)]
    # the example at 30 sees the click at 10, before the window (left-padded history)
    assert examples[0][1][S.HIST_ITEM_IDS] == [S.PAD_ID, S.PAD_ID, S.PAD_ID, 100]
    # and the same features as without --train-from: only the examples before 25 are gone
    full = dict((ex[S.TIMESTAMP], ex) for _, ex in build_user_examples(
        1, rec, search, None, {}, SCHEMA, time_split=(35, 55), search_examples=True))
    assert examples[0][1][S.HIST_ITEM_IDS] == full[30][S.HIST_ITEM_IDS]
    assert [ex[S.TIMESTAMP] for split, ex in examples if split == S.SEARCH_TRAIN] == [28]
    args, _ = build_tfrecords.parse_args(["--input", "i", "--output", "o", "--split-by", "time",
                                          "--train-until", "2023-05-23",
                                          "--train-from", "2023-05-22"])
    assert args.time_split[2] == 1_684_684_800_000
    for argv in (["--train-from", "2023-05-22"],
                 ["--split-by", "time", "--train-until", "2023-05-22", "--train-from",
                  "2023-05-23"]):
        with pytest.raises(SystemExit):
            build_tfrecords.parse_args(["--input", "i", "--output", "o", *argv])
