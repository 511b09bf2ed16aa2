"""pipelines.row_checks on hand-made rows (issue 31): duplicates, held-out interactions, one
item_features row per item, timestamp units, quote-aware record joining."""

import pytest

from pipelines import kuaisar, row_checks
from pipelines.beam_support import InputError
from pipelines.log_reading import join_quoted
from tests.pipelines import hand_log

M = kuaisar.MISSING


def test_dedupe_keeps_the_first_of_each_row_unless_asked_to_keep_all():
    rows = [(2, 1, 0), (1, 1, 1), (2, 1, 0), (2, 1, 0)]
    assert row_checks.dedupe(rows) == ([(2, 1, 0), (1, 1, 1)], 2)
    assert row_checks.dedupe(rows, keep=True) == (rows, 2)


@pytest.mark.parametrize("rows, expected, removed", [
    ([], [], 0),
    ([(1, 5, 1)], [(1, 5, 1)], 0),
    # kept copies of the test and the valid interaction: one row each, train copies stay
    ([(1, 5, 1), (1, 5, 1), (2, 6, 0), (2, 6, 0), (3, 7, 1), (3, 7, 1)],
     [(1, 5, 1), (1, 5, 1), (2, 6, 0), (3, 7, 1)], 2),
    # one impression logged not clicked and clicked: the clicked row is held out
    ([(1, 5, 1), (2, 6, 0), (3, 7, 0), (3, 7, 1)], [(1, 5, 1), (2, 6, 0), (3, 7, 1)], 1),
    # every row the same interaction: a test row only
    ([(3, 7, 1)] * 3, [(3, 7, 1)], 2),
])
def test_the_last_two_distinct_interactions_are_held_out_once(rows, expected, removed):
    got, n = row_checks.distinct_held_out(rows)
    assert (got, n) == (expected, removed)
    held = [r[:2] for r in got[-2:]]
    assert len(held) == len(set(held))


def test_one_item_row_by_the_documented_rule():
    assert row_checks.resolve_item_rows([(4, 2, 20)]) == ((4, 2, 20), 0, 0)
    # the fewest missing values first, then the smallest tuple; duplicates apart
    assert row_checks.resolve_item_rows([(M, 1, 10), (4, 2, 20), (4, 2, 20), (4, 1, 30)]) == (
        (4, 1, 30), 1, 2)


def header(file, columns):
    return kuaisar.parse_header(file, ",".join(columns))


def sample(file, rows):
    return header(file, kuaisar.COLUMNS[file]), [r.encode() for r in rows]


BASE = 1_684_742_400_000


def test_timestamps_in_seconds_are_found_against_the_datetime_column():
    good_rec = [hand_log.rec(1, 11, BASE + i * 1000, 1) for i in range(5)]
    good_src = [hand_log.src(1, 7, BASE + i, [1], 11, 0) for i in range(5)]
    row_checks.check_timestamp_units({"rec_inter": sample("rec_inter", good_rec),
                                      "src_inter": sample("src_inter", good_src)})
    in_seconds = [row.replace(f",{BASE + i}.0,", f",{(BASE + i) / 1000},")
                  for row, i in zip(good_rec, range(0, 5000, 1000))]
    with pytest.raises(InputError, match="rec_inter: column timestamp holds seconds, not "
                                         "milliseconds: 5 of the first 5 rows match column time"):
        row_checks.check_timestamp_units({"rec_inter": sample("rec_inter", in_seconds)})
    src_seconds = [hand_log.src(1, 7, BASE + i, [1], 11, 0).replace(
        f",{BASE + i},", f",{(BASE + i) // 1000},") for i in range(5)]
    with pytest.raises(InputError, match="src_inter: column search_session_timestamp holds "
                                         "seconds"):
        row_checks.check_timestamp_units({"src_inter": sample("src_inter", src_seconds)})


def test_without_datetime_columns_the_two_files_are_compared():
    rec_cols = [c for c in kuaisar.REC_INTER_COLUMNS if c != "time"]
    src_cols = [c for c in kuaisar.SRC_INTER_COLUMNS if c != "search_session_time"]
    rec = [f"1,11,1,1,{(BASE + i) / 1000},1,0,0,0,0,0".encode() for i in range(3)]
    src = [f'1,7,{BASE + i},"[1]",U,11,0,V'.encode() for i in range(3)]
    samples = {"rec_inter": (header("rec_inter", rec_cols), rec),
               "src_inter": (header("src_inter", src_cols), src)}
    with pytest.raises(InputError, match=r"rec_inter: column timestamp \(median 1\.685e\+09\) "
                                         r"is 1,000x smaller than src_inter's "
                                         r"search_session_timestamp"):
        row_checks.check_timestamp_units(samples)


def test_join_quoted_keeps_a_quoted_line_break_in_its_record():
    lines = [b'1,"a', b"b, c", b'd",3', b"2,x,4", b'3,"open']
    assert list(join_quoted(iter(lines))) == [b'1,"a\nb, c\nd",3', b"2,x,4", b'3,"open']
