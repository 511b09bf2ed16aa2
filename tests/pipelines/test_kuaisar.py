"""The CSV line parser: values, reasons for rejection, header handling."""

import pytest

from pipelines import kuaisar


def parser(file):
    return kuaisar.LineParser(kuaisar.parse_header(file, ",".join(kuaisar.COLUMNS[file]).encode()))


def test_rec_row_parses_float_timestamps_and_bytes():
    row = b"7,103656000000,60792.0,45400.0,2023-05-22 15:53:20,1.684742e+12,1,0,0,0,0,0"
    assert parser(kuaisar.REC_INTER)(row) == (7, (1_684_742_000_000, 103656000000, 1))


def test_src_row_parses_quoted_keyword_and_click_count():
    row = '14358,1,2023-05-22 21:58:52,1684763932919,"[20, 34, 3]",USER_INPUT,103656000000,2,VIDEO'
    assert parser(kuaisar.SRC_INTER)(row) == (
        14358, (1684763932919, 1, (20, 34, 3), 103656000000, 1))


def test_optional_feature_cells_become_missing():
    assert parser(kuaisar.USER_FEATURES)("6302,1,,nan,3") == (
        6302, (1, kuaisar.MISSING, kuaisar.MISSING, 3))
    row = '1,"[1, 213]",10,NORMAL,2023-04-22,LongImport,9,a,b,,c,d,0,e,f,0,g,h'
    assert parser(kuaisar.ITEM_FEATURES)(row) == (1, (10, 9, kuaisar.MISSING))


@pytest.mark.parametrize("line, reason", [
    ("1,2,3", "field_count:3!=12"),
    ("a,2,1.0,1.0,t,1000.0,1,0,0,0,0,0", "bad_int:user_id"),
    ("1,2.5,1.0,1.0,t,1000.0,1,0,0,0,0,0", "bad_int:item_id"),
    ("1,-2,1.0,1.0,t,1000.0,1,0,0,0,0,0", "negative:item_id"),
    ("1,2,1.0,1.0,t,nan,1,0,0,0,0,0", "bad_timestamp:timestamp"),
    ("1,2,1.0,1.0,t,1000.0,,0,0,0,0,0", "empty:click"),
    ("1,2,1.0,1.0,t\x00,1000.0,1,0,0,0,0,0", "nul_byte"),
    (b"1,2,1.0,1.0,\xc3\x28,1000.0,1,0,0,0,0,0", "invalid_utf8"),
])
def test_rec_rejections_have_stable_reasons(line, reason):
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.REC_INTER)(line)
    assert info.value.reason == reason


@pytest.mark.parametrize("cell, reason", [
    ('"[1, x]"', "bad_list:keyword"), ('"[]"', "empty_list:keyword"), ("7", "bad_list:keyword"),
    ('"[1, -2]"', "bad_list:keyword"), ('"[1, 2"', "bad_list:keyword"),
])
def test_bad_keyword_lists(cell, reason):
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.SRC_INTER)(f"1,1,t,1000,{cell},USER_INPUT,5,0,VIDEO")
    assert info.value.reason == reason


@pytest.mark.parametrize("value, reason", [
    ("9223372036854775807", None), ("9223372036854775808", "out_of_range:item_id"),
    ("1" + "0" * 5000, "out_of_range:item_id"), ("1e300", "bad_int:item_id"),
    ("1e3", "bad_int:item_id"), ("inf", "bad_int:item_id"), ("1_000", "bad_int:item_id"),
    ("\u0661\u0662", "bad_int:item_id"), ("0x10", "bad_int:item_id"), ("3.0", None),
    ("+7", None), ("-0", None), ("-3", "negative:item_id"), ("3.5", "bad_int:item_id"),
])
def test_ids_must_be_written_as_int64_integers(value, reason):
    """Issue 17.5: an id above int64 crashed the job when serialized; to_int took "1e300"."""
    line = f"1,{value},1.0,1.0,t,1000.0,1,0,0,0,0,0"
    if reason is None:
        assert parser(kuaisar.REC_INTER)(line)[1][1] == int(value.partition(".")[0])
        return
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.REC_INTER)(line)
    assert info.value.reason == reason


def test_keyword_word_ids_beyond_int64_are_out_of_range():
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.SRC_INTER)(f'1,1,t,1000,"[1, {2**63}]",USER_INPUT,5,0,VIDEO')
    assert info.value.reason == "out_of_range:keyword"
    row = f'1,1,t,1000,"[1, {2**63 - 1}]",USER_INPUT,5,0,VIDEO'
    assert parser(kuaisar.SRC_INTER)(row)[1][2] == (1, 2**63 - 1)


@pytest.mark.parametrize("timestamp, reason", [
    ("1.684742e+12", None), ("-5", "bad_timestamp:timestamp"), ("1_000", "bad_timestamp:timestamp"),
    ("infinity", "bad_timestamp:timestamp"), ("2e14", "bad_timestamp:timestamp"),
])
def test_timestamps_are_plain_decimal_numbers(timestamp, reason):
    line = f"1,2,1.0,1.0,t,{timestamp},1,0,0,0,0,0"
    if reason is None:
        assert parser(kuaisar.REC_INTER)(line)[1][0] == 1_684_742_000_000
        return
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.REC_INTER)(line)
    assert info.value.reason == reason


def test_long_quoted_fields_are_read_and_over_long_ones_are_dead_letters():
    """Issue 17.6: a quoted field over 131,072 characters raised csv.Error and crashed the job."""
    caption = "x" * 200_000
    row = f'1,"{caption}",10,NORMAL,2023-04-22,LongImport,9,a,b,,c,d,0,e,f,0,g,h'
    assert parser(kuaisar.ITEM_FEATURES)(row) == (1, (10, 9, kuaisar.MISSING))
    limit = kuaisar.MAX_FIELD_CHARS
    for too_long in (f'"{"x" * (limit + 1)}"', "x" * (limit + 1), f'"{"x" * (3 * limit)}"'):
        with pytest.raises(kuaisar.MalformedRow) as info:
            parser(kuaisar.ITEM_FEATURES)(f"1,{too_long},10,NORMAL,2023-04-22,LongImport,9,a,b,,c,d,0,"
                                          "e,f,0,g,h")
        assert info.value.reason == "field_too_long"


def test_a_carriage_return_inside_a_quoted_line_is_a_dead_letter():
    with pytest.raises(kuaisar.MalformedRow) as info:
        parser(kuaisar.SRC_INTER)('1,1\r2,t,1000,"[1]",USER_INPUT,5,0,VIDEO')
    assert info.value.reason == "bad_csv"


def test_header_with_other_column_order_and_bom():
    header = kuaisar.parse_header(kuaisar.REC_INTER,
                                  "\ufeffclick,timestamp,item_id,user_id\r\n".encode())
    assert header.missing() == []
    assert kuaisar.LineParser(header)("0,5000,9,3") == (3, (5000, 9, 0))
    assert kuaisar.parse_header(kuaisar.REC_INTER, "user_id,item_id").missing() == [
        "timestamp", "click"]
    assert header.duplicates() == []
    duplicated = kuaisar.parse_header(kuaisar.REC_INTER, "user_id,item_id,user_id, item_id,x")
    assert duplicated.duplicates() == ["item_id", "user_id"]


def test_query_key_and_beijing_time():
    assert kuaisar.query_key((20, 34, 3)) == "20_34_3"
    assert kuaisar.beijing_time(1684742000000) == "2023-05-22 15:53:20"
