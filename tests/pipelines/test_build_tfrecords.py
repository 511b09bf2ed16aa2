"""The Beam job on a hand-written log: every example, table and count worked out by hand."""

import gzip
import json

import pytest
import tensorflow as tf

from pipelines import build_tfrecords
from qrec_tf import data
from qrec_tf import schema as S
from tests.pipelines import hand_log

# The hand-log runs use the single-process runner (worker start-up would dominate a 30-row job);
# test_pipeline_invariants runs the default multi-process mode.
SMALL = ["--history-length", "3", "--max-queries", "2", "--max-query-words", "2",
         "--nip-positives", "2", "--nip-negatives", "2", "--query-clicked-items", "2",
         "--direct_running_mode=in_memory"]
P = -1  # padding of integer features
NO_WORDS = [P, P]


def run_job(input_dir, output_dir, *extra):
    return build_tfrecords.run(["--input", str(input_dir), "--output", str(output_dir),
                                *SMALL, *extra])


def read_split(output_dir, split):
    rows = []
    for batch in data.make_dataset(str(output_dir), split, batch_size=64, shuffle=False):
        batch = {k: v.numpy() for k, v in batch.items()}
        for i in range(len(batch[S.LABEL])):
            rows.append({k: v[i].tolist() for k, v in batch.items()})
    return rows


def by_key(rows):
    return {(r[S.USER_ID], r[S.TIMESTAMP], r[S.ITEM_ID]): r for r in rows}


@pytest.fixture(scope="module")
def hand_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    hand_log.write(root / "in")
    stats = run_job(root / "in", root / "out")
    return root / "out", stats


def example(label, hist, cats, subs, queries, words, clicks, pos, neg, item_feats, user_feats,
            domain=S.FEED_DOMAIN):
    return {
        S.LABEL: label, S.DOMAIN: domain, S.HIST_ITEM_IDS: hist, S.HIST_CATEGORY_IDS: cats,
        S.HIST_SUBCATEGORY_IDS: subs, S.QUERY_KEYS: [q.encode() for q in queries],
        S.QUERY_WORD_IDS: words, S.QUERY_CLICKED_ITEM_IDS: clicks, S.NIP_POS_ITEM_IDS: pos,
        S.NIP_NEG_ITEM_IDS: neg,
        S.AUTHOR_ID: item_feats[0], S.CATEGORY_ID: item_feats[1],
        S.SUBCATEGORY_ID: item_feats[2], S.SEARCH_ACTIVE_LEVEL: user_feats[0],
        S.REC_ACTIVE_LEVEL: user_feats[1], S.ONEHOT_FEAT1: user_feats[2],
        S.ONEHOT_FEAT2: user_feats[3],
    }


U1, U2 = (2, 3, 1, 5), (P, P, P, P)  # user 2 has no user_features row
NONE = [P, P]
# Per-query clicks (--query-clicked-items 2): "7_8" at 1500 clicked 201, "9_3_4" at 3000 nothing,
# "7_8" at 4500 clicked 204; user 2's "7_8" at 500 clicked 201.
NO_CLICKS, C201, C204 = [P, P], [201, P], [204, P]
# (user, t, item) -> (split, expected features). Worked out from hand_log's docstring rules:
# user 1 train = t 1000..4000; NIP candidates: clicks 11@1000 13@3000 14@4000, non-click 12@2000.
# user 2 held-out items {22, 21}: NIP candidates are only 24@2000 (click) and 11@1000 (non-click).
EXPECTED = {
    (1, 1000, 11): ("train", example(1, [P, P, P], [P, P, P], [P, P, P], ["", ""],
                                     [NO_WORDS, NO_WORDS], [NO_CLICKS, NO_CLICKS], [13, 14],
                                     [12, P], (1, 1, 10), U1)),
    (1, 2000, 12): ("train", example(0, [P, P, 11], [P, P, 1], [P, P, 10], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], [13, 14], NONE,
                                     (1, 1, 11), U1)),
    # the session at t=3000 is not strictly before the impression at 3000
    (1, 3000, 13): ("train", example(1, [P, P, 11], [P, P, 1], [P, P, 10], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], [14, P], NONE,
                                     (2, 2, 20), U1)),
    (1, 4000, 14): ("train", example(1, [P, 11, 13], [P, 1, 2], [P, 10, 20], ["7_8", "9_3_4"],
                                     [[7, 8], [9, 3]], [C201, NO_CLICKS], NONE, NONE, (2, 2, 21),
                                     U1)),
    (1, 5000, 15): ("valid", example(0, [11, 13, 14], [1, 2, 2], [10, 20, 21], ["9_3_4", "7_8"],
                                     [[9, 3], [7, 8]], [NO_CLICKS, C204], NONE, NONE, (3, 1, 10),
                                     U1)),
    (1, 6000, 16): ("test", example(1, [11, 13, 14], [1, 2, 2], [10, 20, 21], ["9_3_4", "7_8"],
                                    [[9, 3], [7, 8]], [NO_CLICKS, C204], NONE, NONE, (3, 2, 20),
                                    U1)),
    # two impressions at t=1000: neither is in the other's history or NIP targets
    (2, 1000, 11): ("train", example(0, [P, P, P], [P, P, P], [P, P, P], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], [24, P], NONE,
                                     (1, 1, 10), U2)),
    (2, 1000, 21): ("train", example(1, [P, P, P], [P, P, P], [P, P, P], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], [24, P], NONE,
                                     (4, 1, 10), U2)),
    (2, 2000, 24): ("train", example(1, [P, P, 21], [P, P, 1], [P, P, 10], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], NONE, NONE,
                                     (P, P, P), U2)),
    (2, 2200, 21): ("train", example(1, [P, 21, 24], [P, 1, P], [P, 10, P], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], NONE, NONE,
                                     (4, 1, 10), U2)),
    (2, 2500, 22): ("valid", example(1, [21, 24, 21], [1, P, 1], [10, P, 10], ["", "7_8"],
                                     [NO_WORDS, [7, 8]], [NO_CLICKS, C201], NONE, NONE,
                                     (4, 2, 20), U2)),
    (2, 3000, 21): ("test", example(0, [24, 21, 22], [P, 1, 2], [P, 10, 20], ["", "7_8"],
                                    [NO_WORDS, [7, 8]], [NO_CLICKS, C201], NONE, NONE,
                                    (4, 1, 10), U2)),
}


def test_every_example_matches_the_hand_computed_one(hand_output):
    out, _ = hand_output
    for split in S.SPLITS:
        got = by_key(read_split(out, split))
        want = {k: v for k, (s, v) in EXPECTED.items() if s == split}
        assert sorted(got) == sorted(want), split
        for key, expected in want.items():
            actual = {name: got[key][name] for name in expected}
            assert actual == expected, (split, key)


def test_nip_targets_are_never_held_out_items(hand_output):
    out, _ = hand_output
    held_out = {1: {15, 16}, 2: {21, 22}}
    for row in read_split(out, "train"):
        targets = set(row[S.NIP_POS_ITEM_IDS] + row[S.NIP_NEG_ITEM_IDS]) - {P}
        assert not targets & held_out[row[S.USER_ID]]


def test_stats_balance_and_count_users_and_splits(hand_output):
    out, stats = hand_output
    assert json.loads((out / S.STATS_FILE).read_text()) == stats
    data_lines = {name: len(lines) - 1 for name, lines in hand_log.FILES.items()}
    for name, lines in data_lines.items():
        entry = stats[name]
        assert entry["rows_read"] == lines
        assert entry["rows_read"] == entry["rows_used"] + entry["rows_rejected"]
        assert entry["rows_rejected"] == 0
    assert stats["users"]["kept"] == 2
    assert stats["users"]["dropped"] == {"no_search_history": 1, "no_rec_history": 1,
                                         "no_rec_and_no_search": 1}
    assert stats["users"]["kept_without_features_row"] == 1
    assert stats["rec_inter"]["rows_of_dropped_users"] == 2
    assert stats["src_inter"]["rows_of_dropped_users"] == 1
    assert {s: stats["examples"][s]["count"] for s in S.SPLITS} == {
        "train": 8, "valid": 2, "test": 2}
    assert stats["examples"]["train"]["ctr"] == pytest.approx(6 / 8)
    assert stats["examples"]["valid"]["ctr"] == pytest.approx(1 / 2)
    assert stats["query_items"]["queries"] == 3
    assert stats["query_items"]["share_with_click"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def search_output(tmp_path_factory):
    """--search-examples on the hand log plus two search sessions of user 1 at or after its test
    time (6000): neither is before any feed impression, so the feed examples stay the same."""
    root = tmp_path_factory.mktemp("search")
    hand_log.write(root / "in", extra={"src_inter": [
        hand_log.src(1, 104, 6000, [9, 3, 4], 203, 1), hand_log.src(1, 105, 7000, [5], 205, 0)]})
    stats = run_job(root / "in", root / "out", "--search-examples")
    return root / "out", stats


SEARCH = S.SEARCH_DOMAIN
# Search impressions before each user's first held-out feed interaction (user 1: 5000, user 2:
# 2500), with history and queries strictly before the session's time.
EXPECTED_SEARCH = {
    (1, 1500, 201): example(1, [P, P, 11], [P, P, 1], [P, P, 10], ["", ""], [NO_WORDS, NO_WORDS],
                            [NO_CLICKS, NO_CLICKS], NONE, NONE, (5, 1, 10), U1, SEARCH),
    (1, 1500, 202): example(0, [P, P, 11], [P, P, 1], [P, P, 10], ["", ""], [NO_WORDS, NO_WORDS],
                            [NO_CLICKS, NO_CLICKS], NONE, NONE, (5, 2, 20), U1, SEARCH),
    # its own session (3000) is not among its queries; 13 was clicked at 3000, not before
    (1, 3000, 203): example(0, [P, P, 11], [P, P, 1], [P, P, 10], ["", "7_8"], [NO_WORDS, [7, 8]],
                            [NO_CLICKS, C201], NONE, NONE, (6, 3, 30), U1, SEARCH),
    (1, 4500, 201): example(0, [11, 13, 14], [1, 2, 2], [10, 20, 21], ["7_8", "9_3_4"],
                            [[7, 8], [9, 3]], [C201, NO_CLICKS], NONE, NONE, (5, 1, 10), U1,
                            SEARCH),
    (1, 4500, 204): example(1, [11, 13, 14], [1, 2, 2], [10, 20, 21], ["7_8", "9_3_4"],
                            [[7, 8], [9, 3]], [C201, NO_CLICKS], NONE, NONE, (6, 3, 30), U1,
                            SEARCH),
    (2, 500, 201): example(1, [P, P, P], [P, P, P], [P, P, P], ["", ""], [NO_WORDS, NO_WORDS],
                           [NO_CLICKS, NO_CLICKS], NONE, NONE, (5, 1, 10), U2, SEARCH),
}


def test_search_examples_match_the_hand_computed_ones(search_output, hand_output):
    out, stats = search_output
    got = by_key(read_split(out, S.SEARCH_TRAIN))
    assert sorted(got) == sorted(EXPECTED_SEARCH)
    for key, expected in EXPECTED_SEARCH.items():
        assert {name: got[key][name] for name in expected} == expected, key
    # the feed splits do not change (the extra sessions are at or after user 1's last impression)
    for split in S.SPLITS:
        assert by_key(read_split(out, split)) == by_key(read_split(hand_output[0], split))
    # user 1's sessions at 6000 and 7000 are after its training period: counted, not written
    assert stats["examples"][S.SEARCH_TRAIN] == {"count": 6, "clicks": 3, "with_queries": 3,
                                                 "ctr": 0.5}
    assert stats["search_examples"] == {"outside_training_period": 2}
    assert stats["src_inter"]["rows_used"] == len(hand_log.SRC_ROWS) + 2
    assert stats["src_inter"]["rows_of_dropped_users"] == 1   # user 4's row
    # kept users' search rows = examples + the ones outside the training period
    assert len(hand_log.SRC_ROWS) + 2 - 1 == 6 + 2


def test_multitask_dataset_mixes_feed_and_search_examples_once_per_epoch(search_output):
    out, _ = search_output
    def keys(dataset):
        return [(int(u), int(t), int(i), int(d)) for batch in dataset for u, t, i, d in zip(
            batch[S.USER_ID], batch[S.TIMESTAMP], batch[S.ITEM_ID], batch[S.DOMAIN])]
    mixed = data.make_multitask_dataset(str(out), 4, seed=3, num_epochs=2)
    assert mixed.cardinality().numpy() == 7    # (8 feed + 6 search) * 2 epochs / 4
    got = keys(mixed)
    assert got == keys(data.make_multitask_dataset(str(out), 4, seed=3, num_epochs=2))
    want = sorted({(u, t, i, S.FEED_DOMAIN) for u, t, i in by_key(read_split(out, "train"))}
                  | {(u, t, i, S.SEARCH_DOMAIN) for u, t, i in EXPECTED_SEARCH})
    assert sorted(got) == sorted(want * 2)
    assert {d for *_, d in got[:14]} == {S.FEED_DOMAIN, S.SEARCH_DOMAIN}
    x, y = next(iter(data.make_multitask_dataset(str(out), 14, supervised=True)))
    assert S.LABEL not in x and y.shape == (14,) and int(y.numpy().sum()) == 6 + 3
    with pytest.raises(ValueError, match="two or more distinct splits"):
        data.make_multitask_dataset(str(out), 4, splits=["train"])


def test_without_the_flag_there_are_no_search_examples(hand_output):
    out, stats = hand_output
    assert not (out / S.SEARCH_TRAIN).exists()
    assert S.SEARCH_TRAIN not in stats["examples"] and "search_examples" not in stats
    with pytest.raises(FileNotFoundError, match="--search-examples"):
        data.make_dataset(str(out), S.SEARCH_TRAIN, 4)


def read_vocab(out, name):
    return (out / S.VOCAB_DIR / f"{name}.txt").read_text().splitlines()


def test_vocabularies_hold_counts_most_frequent_first(hand_output):
    out, _ = hand_output
    assert read_vocab(out, S.VOCAB_USERS) == ["1\t6", "2\t6"]
    # feed rows of kept users + all search impressions; user 3's feed items 31, 32 are not used
    assert read_vocab(out, S.VOCAB_ITEMS) == [
        "21\t3", "201\t3", "11\t2", "12\t1", "13\t1", "14\t1", "15\t1", "16\t1", "22\t1", "24\t1",
        "202\t1", "203\t1", "204\t1", "205\t1"]
    assert read_vocab(out, S.VOCAB_QUERIES) == ["7_8\t3", "5\t1", "9_3_4\t1"]
    assert read_vocab(out, S.VOCAB_WORDS) == ["7\t3", "8\t3", "3\t1", "4\t1", "5\t1", "9\t1"]
    assert read_vocab(out, S.VOCAB_CATEGORIES) == ["1\t5", "2\t5", "3\t3"]
    assert read_vocab(out, S.VOCAB_SEARCH_ACTIVE_LEVELS) == ["2\t1"]  # kept users with features
    assert S.read_vocab(str(out), S.VOCAB_USERS) == [("1", 6), ("2", 6)]


def test_min_count_drops_rare_values(tmp_path):
    hand_log.write(tmp_path / "in")
    run_job(tmp_path / "in", tmp_path / "out", "--min-count", "3")
    assert read_vocab(tmp_path / "out", S.VOCAB_ITEMS) == ["21\t3", "201\t3"]
    assert read_vocab(tmp_path / "out", S.VOCAB_QUERIES) == ["7_8\t3"]


def test_query_items_table(hand_output):
    out, _ = hand_output
    files = tf.io.gfile.glob(str(out / S.QUERY_ITEMS_DIR / "*.tfrecord.gz"))
    rows = {}
    for record in tf.data.TFRecordDataset(files, compression_type=S.COMPRESSION):
        parsed = tf.io.parse_single_example(record, S.QUERY_ITEMS_SPEC)
        dense = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                 for k, v in parsed.items()}
        rows[dense[S.QI_QUERY_KEY].decode()] = {
            k: v.tolist() for k, v in dense.items() if k != S.QI_QUERY_KEY}
    assert rows == {
        "7_8": {S.QI_WORD_IDS: [7, 8], S.QI_CLICKED_ITEM_IDS: [201, 204],
                S.QI_CLICK_COUNTS: [2, 1], S.QI_UNCLICKED_ITEM_IDS: [202], S.QI_SESSIONS: 3},
        "9_3_4": {S.QI_WORD_IDS: [9, 3, 4], S.QI_CLICKED_ITEM_IDS: [], S.QI_CLICK_COUNTS: [],
                  S.QI_UNCLICKED_ITEM_IDS: [203], S.QI_SESSIONS: 1},
        "5": {S.QI_WORD_IDS: [5], S.QI_CLICKED_ITEM_IDS: [], S.QI_CLICK_COUNTS: [],
              S.QI_UNCLICKED_ITEM_IDS: [205], S.QI_SESSIONS: 1},
    }
    assert {row.pop(S.QI_QUERY_KEY): row for row in data.query_items(str(out))} == rows


def test_dataset_shapes_and_dtypes_come_from_the_schema(hand_output):
    out, _ = hand_output
    schema = S.Schema.load(str(out))
    assert schema == S.Schema(3, 2, 2, 2, 2, query_clicked_items=2)
    batch = next(iter(data.make_dataset(str(out), "train", batch_size=5, shuffle=False)))
    assert sorted(batch) == sorted(schema.feature_names)
    for feature in schema.features:
        assert batch[feature.name].dtype == feature.tf_dtype, feature.name
        assert tuple(batch[feature.name].shape) == (5, *feature.shape), feature.name
    x, y = next(iter(data.make_dataset(str(out), "test", batch_size=8, supervised=True)))
    assert S.LABEL not in x and y.shape == (2,)
    assert sorted(y.numpy().tolist()) == [0, 1]
    element_spec = data.make_dataset(str(out), "valid", 4, drop_remainder=True).element_spec
    assert element_spec[S.QUERY_WORD_IDS].shape.as_list() == [4, 2, 2]


def test_dataset_shuffles_reproducibly_and_repeats(hand_output):
    out, _ = hand_output
    def order(seed):
        ds = data.make_dataset(str(out), "train", 1, seed=seed, shuffle=True, num_epochs=2)
        return [(int(b[S.USER_ID][0]), int(b[S.TIMESTAMP][0])) for b in ds]
    first = order(7)
    assert first == order(7) and len(first) == 16
    assert sorted(first[:8]) == sorted(first[8:])


def test_dataset_errors_are_clear(tmp_path, hand_output):
    out, _ = hand_output
    with pytest.raises(FileNotFoundError, match="schema.json"):
        data.make_dataset(str(tmp_path), "train", 4)
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_dataset(str(out), "training", 4)
    with pytest.raises(ValueError, match="unknown feature"):
        data.make_dataset(str(out), "train", 4, features=["user_idd"])


BAD_LINES = {  # file -> [(line, expected reason)]
    "rec_inter": [
        ("1,17,1000.0,2000.0", "field_count:4!=12"),                       # truncated
        ("1x,17,1000.0,2000.0,2023-05-22 08:00:07,7000.0,1,0,0,0,0,0", "bad_int:user_id"),
        ("1,,1000.0,2000.0,2023-05-22 08:00:07,7000.0,1,0,0,0,0,0", "empty:item_id"),
        ("1,17,1000.0,2000.0,2023-05-22 08:00:07,,1,0,0,0,0,0", "empty:timestamp"),
        ("1,17,1000.0,2000.0,2023-05-22 08:00:07,7000.0,2,0,0,0,0,0", "bad_label:click"),
        ("1,17,1000.0,2000.0,2023-05-22\x00 08:00:07,7000.0,1,0,0,0,0,0", "nul_byte"),
    ],
    "src_inter": [
        ('1,104,2023-05-22 08:00:09,9000,"[3, x]",USER_INPUT,206,1,VIDEO', "bad_list:keyword"),
        ("1,104,2023-05-22 08:00:09,9000,3,USER_INPUT,206,1,VIDEO", "bad_list:keyword"),
        ('1,104,2023-05-22 08:00:09,9000,"[]",USER_INPUT,206,1,VIDEO', "empty_list:keyword"),
        ('1,104,2023-05-22 08:00:09,9000,"[3, 4]",USER_INPUT,206', "field_count:7!=9"),
        ('1,104,2023-05-22 08:00:09,abc,"[3, 4]",USER_INPUT,206,1,VIDEO',
         "bad_timestamp:search_session_timestamp"),
    ],
    "user_features": [("6,1,2", "field_count:3!=5"), ("seven,1,2,0,1", "bad_int:user_id")],
    "item_features": [('-5,"[1]",1,NORMAL,2023-04-22,LongImport,1,c,c,10,s,s,0,e,e,0,e,e',
                       "negative:item_id")],
}


@pytest.fixture(scope="module")
def bad_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    extra = {name: [line for line, _ in lines] for name, lines in BAD_LINES.items()}
    hand_log.write(root / "in", extra=extra)
    # a line that is not UTF-8 at all
    with open(root / "in" / "rec_inter.csv", "ab") as f:
        f.write(b"1,18,1000.0,2000.0,\xff\xfe,7000.0,1,0,0,0,0,0\n")
    stats = run_job(root / "in", root / "out", "--max-rejected-fraction", "1.0")
    return root / "out", stats


def test_malformed_lines_are_dead_lettered_with_reasons_and_counts_balance(bad_output):
    out, stats = bad_output
    letters = []
    for path in (out / S.DEAD_LETTER_DIR).glob("*.jsonl"):
        letters += [json.loads(line) for line in path.read_text().splitlines()]
    want = sorted((f, reason, line) for f, lines in BAD_LINES.items() for line, reason in lines)
    want.append(("rec_inter", "invalid_utf8",
                 "1,18,1000.0,2000.0,\\xff\\xfe,7000.0,1,0,0,0,0,0"))
    assert sorted((d["file"], d["reason"], d["line"]) for d in letters) == sorted(want)
    for name, lines in hand_log.FILES.items():
        bad = len(BAD_LINES[name]) + (name == "rec_inter")
        entry = stats[name]
        assert entry["rows_read"] == len(lines) - 1 + bad
        assert entry["rows_rejected"] == bad
        assert entry["rows_used"] == len(lines) - 1
        assert sum(entry["rejected_by_reason"].values()) == bad


def test_malformed_lines_do_not_change_the_examples(bad_output, hand_output):
    for split in S.SPLITS:
        assert by_key(read_split(bad_output[0], split)) == by_key(read_split(hand_output[0], split))


def test_too_many_rejected_rows_fail_loudly_after_writing_stats(tmp_path):
    hand_log.write(tmp_path / "in", extra={"user_features": ["x,1,2,3,4", "y,1,2,3,4"]})
    with pytest.raises(SystemExit, match=r"user_features: 2 of 6 rows rejected"):
        run_job(tmp_path / "in", tmp_path / "out", "--max-rejected-fraction", "0.2")
    # a failed run is never published as data: its outputs are kept apart for inspection
    assert not (tmp_path / "out" / S.STATS_FILE).exists()
    stats = json.loads((tmp_path / "out" / "failed_run" / S.STATS_FILE).read_text())
    assert stats["user_features"]["rejected_by_reason"] == {"bad_int:user_id": 2}


def test_gzip_input_gives_the_same_examples(tmp_path, hand_output):
    for name, lines in hand_log.FILES.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        with gzip.open(tmp_path / "in" / f"{name}.csv.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    run_job(tmp_path / "in", tmp_path / "out")
    for split in S.SPLITS:
        assert (by_key(read_split(tmp_path / "out", split))
                == by_key(read_split(hand_output[0], split)))


def test_user_mistakes_get_a_message_not_a_traceback(tmp_path, capsys, hand_output):
    hand_log.write(tmp_path / "in")
    (tmp_path / "in" / "src_inter.csv").unlink()
    assert build_tfrecords.main(["--input", str(tmp_path / "in"), "--output",
                                 str(tmp_path / "out")]) == 2
    assert "src_inter.csv (or src_inter.csv.gz) not found" in capsys.readouterr().err
    # an earlier run's output is not silently mixed with a new one
    out, _ = hand_output
    hand_log.write(tmp_path / "complete")
    assert build_tfrecords.main(["--input", str(tmp_path / "complete"), "--output", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    hand_log.write(tmp_path / "cols", files={**hand_log.FILES, "rec_inter": [
        "user_id,item_id,time,click", "1,2,x,1"]})
    assert build_tfrecords.main(["--input", str(tmp_path / "cols"), "--output",
                                 str(tmp_path / "out2")]) == 2
    assert "header lacks column(s) ['timestamp']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        build_tfrecords.main(["--input", "x", "--output", "y", "--nip-positives", "0"])
    assert exit_info.value.code == 2
    assert "nip_positives must be a positive integer" in capsys.readouterr().err
