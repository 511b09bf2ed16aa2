"""The Beam job never takes bad data or bad flags silently (issue 31, items 1-5 and 8): duplicate
rows, conflicting and missing item features, timestamps in seconds, misspelled flags, blank lines
and quoted newlines. Each test fails on the code before issue 31."""

import json
import logging

import pytest

from pipelines import build_tfrecords, kuaisar
from pipelines.beam_support import InputError
from qrec_tf import schema as S
from tests.pipelines import hand_log
from tests.pipelines.test_build_tfrecords import by_key, read_split, run_job
from tests.pipelines.test_hostile_inputs import FAILED, assert_hand_examples, dead_letters


def doubled(lines):
    """A file's lines with every data row written twice (a replayed log)."""
    return [lines[0]] + [row for row in lines[1:] for _ in range(2)]


def held_out_pairs(out):
    """{user: (valid (t, item), test (t, item))}."""
    pairs = {}
    for split in ("valid", "test"):
        for row in read_split(out, split):
            pairs.setdefault(row[S.USER_ID], []).append((row[S.TIMESTAMP], row[S.ITEM_ID]))
    return {user: tuple(v) for user, v in pairs.items()}


# --- 1. exact duplicate rows -------------------------------------------------------------------
def test_doubled_feed_and_search_rows_are_counted_and_dropped(tmp_path):
    """Issue 31.1: doubling every row gave valid = test and a doubled train split, exit 0."""
    files = {**hand_log.FILES, "rec_inter": doubled(hand_log.FILES["rec_inter"]),
             "src_inter": doubled(hand_log.FILES["src_inter"])}
    inp = hand_log.write(tmp_path / "in", files=files)
    stats = run_job(inp, tmp_path / "out")
    assert_hand_examples(tmp_path / "out")   # exactly the examples of the single log
    for name, rows in (("rec_inter", hand_log.REC_ROWS), ("src_inter", hand_log.SRC_ROWS)):
        entry = stats[name]
        assert entry["rows_read"] == 2 * len(rows)
        assert entry["duplicate_rows"] == len(rows)
        assert entry["rows_dropped"] == {"duplicate": len(rows)}
        assert entry["rows_used"] == len(rows)
        assert entry["rows_read"] == (entry["rows_used"] + entry["rows_rejected"]
                                      + sum(entry["rows_dropped"].values()))
    items = (tmp_path / "out" / S.VOCAB_DIR / "items.txt").read_text().splitlines()
    assert "201\t3" in items   # three search impressions, not six


def test_kept_duplicates_never_hold_out_one_interaction_twice(tmp_path):
    files = {**hand_log.FILES, "rec_inter": doubled(hand_log.FILES["rec_inter"])}
    inp = hand_log.write(tmp_path / "in", files=files)
    stats = run_job(inp, tmp_path / "out", "--keep-duplicate-rows")
    # train doubled (8 -> 16), one valid and one test row per user, never the same interaction
    assert {s: stats["examples"][s]["count"] for s in S.SPLITS} == {
        "train": 16, "valid": 2, "test": 2}
    assert held_out_pairs(tmp_path / "out") == {1: ((5000, 15), (6000, 16)),
                                                2: ((2500, 22), (3000, 21))}
    rec = stats["rec_inter"]
    assert rec["duplicate_rows"] == len(hand_log.REC_ROWS)
    assert rec["rows_dropped"] == {"repeat_of_held_out": 4}   # the copies of 4 held-out rows
    assert rec["rows_read"] == rec["rows_used"] + 4


def test_one_impression_logged_clicked_and_not_is_held_out_once(tmp_path):
    """Not an exact duplicate (the click differs), yet one interaction: test keeps the click."""
    inp = hand_log.write(tmp_path / "in", extra={"rec_inter": [hand_log.rec(1, 16, 6000, 0)]})
    stats = run_job(inp, tmp_path / "out")
    assert held_out_pairs(tmp_path / "out")[1] == ((5000, 15), (6000, 16))
    assert stats["rec_inter"]["rows_dropped"] == {"repeat_of_held_out": 1}
    assert_hand_examples(tmp_path / "out")


# --- 2. conflicting item_features rows ------------------------------------------------------------
def test_conflicting_item_rows_are_counted_and_resolved_by_one_rule_everywhere(tmp_path):
    """Issue 31.2: a second row for item 11 was used for the examples while
    item_categories.tsv held both."""
    extra = {"item_features": [hand_log.item(11, 1, 0, 5),       # differs: the smaller one wins
                               hand_log.item(12, 1, 1, 11)]}     # an exact duplicate
    inp = hand_log.write(tmp_path / "in", extra=extra)
    with pytest.raises(SystemExit, match=r"1 of 13 items have rows that differ .*"
                                         r"--max-conflicting-fraction"):
        run_job(inp, tmp_path / "out")
    stats = run_job(inp, tmp_path / "out", "--max-conflicting-fraction", "0.1", "--overwrite")
    entry = stats["item_features"]
    assert entry["conflicting_items"] == 1 and entry["items"] == 13
    assert entry["duplicate_rows"] == 1
    assert entry["rows_dropped"] == {"duplicate": 1, "conflicting": 1}
    assert entry["rows_used"] == len(hand_log.ITEM_ROWS)
    tsv = (tmp_path / "out" / S.ITEM_CATEGORIES_FILE).read_text().splitlines()
    assert sorted(line for line in tsv if line.startswith("11\t")) == ["11\t0\t5\t1"]
    assert len(tsv) == 13
    rows = [r for s in S.SPLITS for r in read_split(tmp_path / "out", s)]
    item11 = [(r[S.CATEGORY_ID], r[S.SUBCATEGORY_ID]) for r in rows if r[S.ITEM_ID] == 11]
    assert item11 and set(item11) == {(0, 5)}
    categories = dict(line.split("\t") for line in
                      (tmp_path / "out" / S.VOCAB_DIR / "categories.txt").read_text().splitlines())
    assert categories["0"] == "1" and categories["1"] == "4"   # one row per item


# --- 3. timestamp units ---------------------------------------------------------------------------
BASE = 1_684_742_400_000  # 2023-05-22 16:00:00 Beijing time, in ms


def rec_with(user, item, ts, click, stamp):
    return (f"{user},{item},1000.0,2000.0,{kuaisar.beijing_time(ts)},{stamp},{click},"
            "0,0,0,0,0")


def real_time_log(directory, seconds: bool):
    """The hand log moved to 2023; with `seconds`, rec_inter's timestamp column in seconds."""
    rec = [hand_log.REC_HEADER]
    for row in hand_log.REC_ROWS:
        f = row.split(",")
        ts = BASE + int(float(f[5]))
        rec.append(rec_with(f[0], f[1], ts, f[6], ts / 1000 if seconds else float(ts)))
    src = [hand_log.SRC_HEADER] + [
        hand_log.src(user, session, BASE + ts, words, item, click) for user, session, ts, words,
        item, click in [(1, 101, 1500, [7, 8], 201, 1), (1, 102, 3000, [9, 3, 4], 203, 0),
                        (2, 201, 500, [7, 8], 201, 1)]]
    return hand_log.write(directory, files={**hand_log.FILES, "rec_inter": rec,
                                            "src_inter": src})


def test_feed_timestamps_in_seconds_fail_naming_the_column(tmp_path, capsys):
    """Issue 31.3: seconds instead of ms built with exit 0 and no example with a query."""
    inp = real_time_log(tmp_path / "in", seconds=True)
    with pytest.raises(InputError, match=r"rec_inter: column timestamp holds seconds, not "
                                         r"milliseconds: 14 of the first 14 rows match column "
                                         r"time only when read as seconds"):
        run_job(inp, tmp_path / "out")
    assert build_tfrecords.main(["--input", str(inp), "--output", str(tmp_path / "o")]) == 2
    assert "column timestamp holds seconds" in capsys.readouterr().err
    good = real_time_log(tmp_path / "good", seconds=False)
    stats = run_job(good, tmp_path / "out")
    assert stats["examples"]["train"]["with_queries"] > 0


def test_a_split_without_queries_is_warned_about(tmp_path, caplog):
    """Search sessions all after the feed: no example has a query; the job says so."""
    late = [hand_log.SRC_HEADER] + [hand_log.src(1, 101, 9000, [7, 8], 201, 1),
                                    hand_log.src(2, 201, 9500, [7], 201, 0)]
    inp = hand_log.write(tmp_path / "in", files={**hand_log.FILES, "src_inter": late})
    with caplog.at_level(logging.WARNING, logger="pipelines.build_tfrecords"):
        stats = run_job(inp, tmp_path / "out")
    assert all(stats["examples"][s]["with_queries"] == 0 for s in S.SPLITS)
    warned = [r.getMessage() for r in caplog.records if "has a query before it" in r.getMessage()]
    assert len(warned) == 3 and warned[0].startswith("train: none of 8 examples")


# --- 4. missing item features ---------------------------------------------------------------
def test_a_header_only_item_features_fails_and_every_vocab_file_is_written(tmp_path):
    """Issue 31.4: exit 0, then the trainer failed with vocab/authors.txt not found."""
    inp = hand_log.write(tmp_path / "in", files={**hand_log.FILES,
                                                 "item_features": [hand_log.ITEM_HEADER]})
    with pytest.raises(SystemExit, match=r"item_features: 12 of 12 feed rows of kept users "
                                         r"\(100.00% > 50.00%, --max-missing-item-features\)"):
        run_job(inp, tmp_path / "out")
    failed = tmp_path / "out" / FAILED
    assert json.loads((failed / S.STATS_FILE).read_text())["item_features"][
        "feed_items_without_features"] == 9
    stats = run_job(inp, tmp_path / "out", "--max-missing-item-features", "1", "--overwrite")
    for name in S.VOCABULARIES:
        assert (tmp_path / "out" / S.VOCAB_DIR / f"{name}.txt").exists(), name
    assert (tmp_path / "out" / S.VOCAB_DIR / "authors.txt").read_text() == ""
    assert stats["vocab"]["authors"] == 0
    S.read_vocab(str(tmp_path / "out"), S.VOCAB_AUTHORS)  # the trainer's reader takes it


def test_missing_item_features_are_counted(tmp_path, caplog):
    inp = hand_log.write(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="pipelines.build_tfrecords"):
        stats = run_job(inp, tmp_path / "out")
    entry = stats["item_features"]   # item 24 (user 2's train row at 2000)
    assert (entry["feed_rows_of_kept_users"], entry["feed_rows_without_features"],
            entry["feed_items_without_features"]) == (12, 1, 1)
    assert any("1 of 12 feed rows of kept users (1 distinct items) have no item_features row"
               in r.getMessage() for r in caplog.records)


# --- 5. misspelled flags ------------------------------------------------------------------------
def test_flags_neither_we_nor_beam_know_are_an_error(tmp_path, capsys):
    """Issue 31.5: --min_count 5 --num_shards 2 ran with the defaults."""
    inp = hand_log.write(tmp_path / "in")
    code = build_tfrecords.main(["--input", str(inp), "--output", str(tmp_path / "out"),
                                 "--min_count", "5", "--num_shards", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --min_count 5 --num_shards 2" in err
    assert not (tmp_path / "out").exists()
    # Beam's own options still pass
    run_job(inp, tmp_path / "out", "--direct_num_workers=1", "--job_name", "qrec")


# --- 8. blank lines and quoted newlines ----------------------------------------------------------
def test_blank_lines_are_skipped_and_counted(tmp_path):
    files = {name: [lines[0], "", *lines[1:3], "  ", "\r", *lines[3:], ""]
             for name, lines in hand_log.FILES.items()}
    inp = hand_log.write(tmp_path / "in", files=files)
    stats = run_job(inp, tmp_path / "out")
    for name, lines in hand_log.FILES.items():
        assert stats[name]["rows_read"] == len(lines) - 1, name
        assert stats[name]["blank_lines"] == 4, name
        assert stats[name]["rows_rejected"] == 0, name
    assert dead_letters(tmp_path / "out") == []
    assert_hand_examples(tmp_path / "out")


def test_a_quoted_newline_is_one_record(tmp_path):
    """A caption with a line break inside its quotes: one row, not two dead letters."""
    caption = hand_log.item(301, 9, 9, 90).replace('"[1, 2]"', '"first line\nsecond, line"')
    inp = hand_log.write(tmp_path / "in", extra={"item_features": [caption]})
    stats = run_job(inp, tmp_path / "out")
    entry = stats["item_features"]
    assert entry["rows_read"] == len(hand_log.ITEM_ROWS) + 1
    assert entry["rows_rejected"] == 0 and entry["rows_used"] == len(hand_log.ITEM_ROWS) + 1
    tsv = (tmp_path / "out" / S.ITEM_CATEGORIES_FILE).read_text().splitlines()
    assert "301\t9\t90\t9" in tsv
    assert by_key(read_split(tmp_path / "out", "train"))
