"""The CSV line parser: values, reasons for rejection, header handling."""

import pytest

from pipelines import kuaisar as K


def parser(file):
    return K.LineParser(K.parse_header(file, ",".join(K.COLUMNS[file]).encode()))


def test_rec_row_parses_float_timestamps_and_bytes():
    row = b"7,103656000000,60792.0,45400.0,2023-05-22 15:53:20,1.684742e+12,1,0,0,0,0,0"
    assert parser(K.REC_INTER)(row) == (7, (1_684_742_000_000, 103656000000, 1))


def test_src_row_parses_quoted_keyword_and_click_count():
    row = '14358,1,2023-05-22 21:58:52,1684763932919,"[20, 34, 3]",USER_INPUT,103656000000,2,VIDEO'
    assert parser(K.SRC_INTER)(row) == (14358, (1684763932919, 1, (20, 34, 3), 103656000000, 1))


def test_optional_feature_cells_become_missing():
    assert parser(K.USER_FEATURES)("6302,1,,nan,3") == (6302, (1, K.MISSING, K.MISSING, 3))
    row = '1,"[1, 213]",10,NORMAL,2023-04-22,LongImport,9,a,b,,c,d,0,e,f,0,g,h'
    assert parser(K.ITEM_FEATURES)(row) == (1, (10, 9, K.MISSING))


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
    with pytest.raises(K.MalformedRow) as info:
        parser(K.REC_INTER)(line)
    assert info.value.reason == reason


@pytest.mark.parametrize("cell, reason", [
    ('"[1, x]"', "bad_list:keyword"), ('"[]"', "empty_list:keyword"), ("7", "bad_list:keyword"),
    ('"[1, -2]"', "bad_list:keyword"), ('"[1, 2"', "bad_list:keyword"),
])
def test_bad_keyword_lists(cell, reason):
    with pytest.raises(K.MalformedRow) as info:
        parser(K.SRC_INTER)(f"1,1,t,1000,{cell},USER_INPUT,5,0,VIDEO")
    assert info.value.reason == reason


def test_header_with_other_column_order_and_bom():
    header = K.parse_header(K.REC_INTER, "\ufeffclick,timestamp,item_id,user_id\r\n".encode())
    assert header.missing() == []
    assert K.LineParser(header)("0,5000,9,3") == (3, (5000, 9, 0))
    assert K.parse_header(K.REC_INTER, "user_id,item_id").missing() == ["timestamp", "click"]


def test_query_key_and_beijing_time():
    assert K.query_key((20, 34, 3)) == "20_34_3"
    assert K.beijing_time(1684742000000) == "2023-05-22 15:53:20"
