"""Property-based tests of the CSV line parser and its field converters (untrusted input).

Any bytes or text in: either a row whose every number is a non-negative int64 (or MISSING), or
MalformedRow with one of the known reasons; never another exception. Well-formed rows, however
the logs spell their numbers, parse back to the values written.
"""

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipelines import kuaisar

REASON = re.compile(
    r"invalid_utf8|nul_byte|bad_csv|field_too_long|field_count:\d+!=\d+"
    r"|(empty|bad_int|negative|out_of_range|bad_timestamp|bad_list|empty_list|bad_label):[a-z_]+")
INT64 = st.integers(0, kuaisar.INT64_MAX)
# Lines made of what CSV and the converters react to, so that the search reaches deep branches.
CSV_ALPHABET = st.sampled_from(list('0123456789,",.-+e[] \r\tnaNx_\x00\u0661\ufeff'))


def parser(file: str, columns=None) -> kuaisar.LineParser:
    header = ",".join(columns or kuaisar.COLUMNS[file])
    return kuaisar.LineParser(kuaisar.parse_header(file, header))


PARSERS = {file: parser(file) for file in kuaisar.LOG_FILES}
# The required columns only, in reverse order: short lines reach the converters more often.
SHORT_PARSERS = {file: parser(file, kuaisar.REQUIRED_COLUMNS[file][::-1])
                 for file in kuaisar.LOG_FILES}


def ints_of(value) -> list[int]:
    if isinstance(value, tuple):
        return [i for part in value for i in ints_of(part)]
    assert isinstance(value, int) and not isinstance(value, bool), value
    return [value]


def check(parse: kuaisar.LineParser, line: bytes | str) -> None:
    """The property: a valid row of int64 values, or a dead letter with a known reason."""
    try:
        row = parse(line)
    except kuaisar.MalformedRow as error:
        assert REASON.fullmatch(error.reason), error.reason
        return
    assert all(kuaisar.MISSING <= i <= kuaisar.INT64_MAX for i in ints_of(row)), row
    key, values = row
    assert 0 <= key
    if parse.file == kuaisar.REC_INTER:
        assert values[2] in (0, 1)
    if parse.file == kuaisar.SRC_INTER:
        assert values[2] and all(w >= 0 for w in values[2]) and values[4] in (0, 1)


@settings(max_examples=300)
@given(file=st.sampled_from(kuaisar.LOG_FILES), line=st.binary(max_size=300))
@example(file=kuaisar.REC_INTER, line=b"1,99999999999999999999,1,1,t,1000,1,0,0,0,0,0")
@example(file=kuaisar.SRC_INTER, line=b'1,1,t,1000,"[1e300]",U,5,0,V')
def test_any_bytes_give_a_row_or_a_dead_letter(file, line):
    check(PARSERS[file], line)
    check(SHORT_PARSERS[file], line)


@settings(max_examples=300)
@given(file=st.sampled_from(kuaisar.LOG_FILES), line=st.text(CSV_ALPHABET, max_size=120))
@example(file=kuaisar.SRC_INTER, line='1\r,1,t,1000,"[1]",U,5,0,V')
def test_csv_like_text_gives_a_row_or_a_dead_letter(file, line):
    check(PARSERS[file], line)
    check(SHORT_PARSERS[file], line)


@given(value=st.text(max_size=40) | st.text(CSV_ALPHABET, max_size=40))
def test_converters_return_int64_or_raise_malformed_row(value):
    for convert, low in ((kuaisar.to_int, 0), (kuaisar.to_optional_int, kuaisar.MISSING),
                         (kuaisar.to_timestamp_ms, 0)):
        try:
            number = convert(value, "c")
        except kuaisar.MalformedRow as error:
            assert REASON.fullmatch(error.reason), error.reason
        else:
            assert low <= number <= kuaisar.INT64_MAX
    try:
        ids = kuaisar.parse_id_list(value, "c")
    except kuaisar.MalformedRow as error:
        assert REASON.fullmatch(error.reason), error.reason
    else:
        assert ids and all(0 <= i <= kuaisar.INT64_MAX for i in ids)


@given(header=st.binary(max_size=100) | st.text(CSV_ALPHABET | st.characters(), max_size=60))
def test_any_header_bytes_give_a_header_or_a_malformed_row(header):
    try:
        parsed = kuaisar.parse_header(kuaisar.REC_INTER, header)
    except kuaisar.MalformedRow as error:
        assert error.reason in ("invalid_utf8", "bad_csv")
    else:
        assert isinstance(parsed.missing(), list) and isinstance(parsed.duplicates(), list)


def spelled(number: int):
    """The ways the logs write an integer: plain, "+n", pandas' "n.0", padded with spaces."""
    return st.sampled_from([str(number), f"+{number}", f"{number}.0", f" {number} "])


@given(number=INT64.flatmap(lambda n: st.tuples(st.just(n), spelled(n))))
def test_to_int_round_trips_every_int64(number):
    value, text = number
    assert kuaisar.to_int(text, "c") == value
    assert kuaisar.to_optional_int(text, "c") == value


@given(number=st.integers(kuaisar.INT64_MAX + 1, 10**40))
def test_to_int_refuses_beyond_int64(number):
    for text in (str(number), f"{number}.0"):
        try:
            kuaisar.to_int(text, "item_id")
        except kuaisar.MalformedRow as error:
            assert error.reason == "out_of_range:item_id"
        else:
            raise AssertionError(f"{text} accepted")


@given(user=INT64, item=INT64, click=st.integers(0, 1), t=st.integers(0, 10**13),
       words=st.lists(INT64, min_size=1, max_size=6), session=INT64, clicks=st.integers(0, 99),
       caption=st.text(st.characters(blacklist_characters='\x00\r\n"', codec="utf-8"),
                       max_size=30))
def test_well_formed_rows_round_trip(user, item, click, t, words, session, clicks, caption):
    rec = [""] * len(kuaisar.REC_INTER_COLUMNS)
    for column, value in (("user_id", user), ("item_id", item), ("timestamp", f"{t}.0"),
                          ("click", click)):
        rec[kuaisar.REC_INTER_COLUMNS.index(column)] = str(value)
    assert PARSERS[kuaisar.REC_INTER](",".join(rec).encode()) == (user, (t, item, click))
    src = [""] * len(kuaisar.SRC_INTER_COLUMNS)
    for column, value in (("user_id", user), ("search_session_id", session),
                          ("search_session_timestamp", t), ("item_id", item),
                          ("click_cnt", clicks),
                          ("keyword", '"[' + ", ".join(map(str, words)) + ']"')):
        src[kuaisar.SRC_INTER_COLUMNS.index(column)] = str(value)
    assert PARSERS[kuaisar.SRC_INTER](",".join(src)) == (
        user, (t, session, tuple(words), item, int(clicks > 0)))
    items = [""] * len(kuaisar.ITEM_FEATURES_COLUMNS)
    items[0], items[1], items[2] = str(item), '"' + caption + '"', str(user)
    assert PARSERS[kuaisar.ITEM_FEATURES](",".join(items)) == (
        item, (user, kuaisar.MISSING, kuaisar.MISSING))
