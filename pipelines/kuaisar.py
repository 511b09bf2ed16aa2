"""KuaiSAR's CSV log format: file names, columns, and a strict line parser with dead-letter reasons.

The column names and order are KuaiSAR's own (https://kuaisar.github.io, "Data Descriptions").
Only the columns QueryRec needs are validated; the others are carried through unread, so a value
missing from, say, `playing_time` never costs a usable row.

Every parse function takes one raw line (bytes or str, no trailing newline) and either returns a
compact tuple or raises `MalformedRow` with a short, stable reason. Reasons are stable strings
(e.g. ``"bad_int:user_id"``) so dead letters can be counted by reason.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import re
from typing import Sequence

REC_INTER = "rec_inter"
SRC_INTER = "src_inter"
USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
LOG_FILES = (REC_INTER, SRC_INTER, USER_FEATURES, ITEM_FEATURES)

REC_INTER_COLUMNS = (
    "user_id", "item_id", "playing_time", "duration_ms", "time", "timestamp", "click",
    "forward", "like", "follow", "search", "search_item_related",
)
SRC_INTER_COLUMNS = (
    "user_id", "search_session_id", "search_session_time", "search_session_timestamp", "keyword",
    "search_source", "item_id", "click_cnt", "item_type",
)
USER_FEATURES_COLUMNS = (
    "user_id", "search_active_level", "rec_active_level", "onehot_feat1", "onehot_feat2",
)
ITEM_FEATURES_COLUMNS = (
    "item_id", "caption", "author_id", "item_type", "upload_time", "upload_type",
    "first_level_category_id", "first_level_category_name", "first_level_category_name_en",
    "second_level_category_id", "second_level_category_name", "second_level_category_name_en",
    "third_level_category_id", "third_level_category_name", "third_level_category_name_en",
    "fourth_level_category_id", "fourth_level_category_name", "fourth_level_category_name_en",
)
COLUMNS = {
    REC_INTER: REC_INTER_COLUMNS,
    SRC_INTER: SRC_INTER_COLUMNS,
    USER_FEATURES: USER_FEATURES_COLUMNS,
    ITEM_FEATURES: ITEM_FEATURES_COLUMNS,
}
# The columns a file must have for the job to use it (others may be absent or extra).
REQUIRED_COLUMNS = {
    REC_INTER: ("user_id", "item_id", "timestamp", "click"),
    SRC_INTER: ("user_id", "search_session_id", "search_session_timestamp", "keyword", "item_id",
                "click_cnt"),
    USER_FEATURES: ("user_id", "search_active_level", "rec_active_level", "onehot_feat1",
                    "onehot_feat2"),
    ITEM_FEATURES: ("item_id", "author_id", "first_level_category_id", "second_level_category_id"),
}
# Raw categorical value used when an optional feature cell is empty; the in-graph lookup maps it
# to the padding index, like a padded sequence position.
MISSING = -1

BEIJING = datetime.timezone(datetime.timedelta(hours=8))

# Every id and count is stored as int64 (tf.train.Int64List), so a larger value is a dead letter
# ("out_of_range:<column>") rather than a crash when the example is serialized.
INT64_MAX = 2**63 - 1
# Integers as the logs write them: ASCII digits, optionally with a zero fraction ("3.0", as pandas
# writes an integer column that holds a NaN). Python's int() / float() would also take "1_000",
# "1e300", "inf" or non-ASCII digits; none of those is an id.
_INT = re.compile(r"([+-]?)([0-9]+)(?:\.0*)?", re.ASCII)
# The longest field a line may have, in characters (KuaiSAR's longest cells, captions and keyword
# lists, are a few hundred). The csv module's own limit (131,072) raised a csv.Error that crashed
# the job; a longer field is now a dead letter ("field_too_long"). The limit is process-wide, so it
# is set when this module is imported (also in every Beam worker that unpickles a LineParser).
MAX_FIELD_CHARS = 1 << 20
csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS + 1))


class MalformedRow(ValueError):
    """A line that cannot be used; `reason` is a short stable code for the dead-letter output."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Header:
    """Column positions of one CSV file, read from its header line."""

    file: str
    names: tuple[str, ...]

    def index(self, column: str) -> int:
        return self.names.index(column)

    def missing(self) -> list[str]:
        return [c for c in REQUIRED_COLUMNS[self.file] if c not in self.names]

    def duplicates(self) -> list[str]:
        """Column names the header repeats: which column a reader takes would be a guess."""
        return sorted(name for name, n in collections.Counter(self.names).items() if n > 1)


def parse_header(file: str, line: bytes | str) -> Header:
    """The header line's column names; raises MalformedRow for bytes that are not a CSV line."""
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise MalformedRow("invalid_utf8") from None
    else:
        text = line.lstrip("\ufeff")
    try:
        names = tuple(name.strip() for name in next(csv.reader([text.rstrip("\r\n")]), []))
    except csv.Error:
        raise MalformedRow("bad_csv") from None
    return Header(file, names)


def split_fields(line: bytes | str, width: int) -> list[str]:
    """Decodes and splits one CSV line; raises MalformedRow for bytes that are not a row."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRow("invalid_utf8") from None
    if "\x00" in line:
        raise MalformedRow("nul_byte")
    line = line.rstrip("\r")
    # Most lines have no quoted field: str.split is several times faster than the csv module.
    if '"' in line:
        try:
            fields = next(csv.reader([line]), [])
        except csv.Error as error:  # a field past csv's limit, or a carriage return in the line
            raise MalformedRow("field_too_long" if "field limit" in str(error) else "bad_csv"
                               ) from None
    else:
        fields = line.split(",")
    if len(line) > MAX_FIELD_CHARS and max(map(len, fields)) > MAX_FIELD_CHARS:
        raise MalformedRow("field_too_long")
    if len(fields) != width:
        raise MalformedRow(f"field_count:{len(fields)}!={width}")
    return fields


def to_int(value: str, column: str) -> int:
    """A non-negative int64 written as an integer ("42", "+42", or "42.0" as pandas writes an
    integer column holding NaNs); anything else raises MalformedRow: "empty:", "negative:",
    "out_of_range:" (above INT64_MAX) or "bad_int:" (any other text, e.g. "1e3" or "1_000")."""
    value = value.strip()
    if not value:
        raise MalformedRow(f"empty:{column}")
    if len(value) <= 19 and value.isdigit() and value.isascii():
        number = int(value)  # the common case, without the regex (this is the hot path)
    else:
        match = _INT.fullmatch(value)
        if match is None:
            raise MalformedRow(f"bad_int:{column}")
        sign, digits = match.groups()
        digits = digits.lstrip("0") or "0"
        if sign == "-" and digits != "0":
            raise MalformedRow(f"negative:{column}")
        # int() of a long digit string is slow (and refused past 4,300 digits): length first.
        number = int(digits) if len(digits) <= 19 else INT64_MAX + 1
    if number > INT64_MAX:
        raise MalformedRow(f"out_of_range:{column}")
    return number


def to_optional_int(value: str, column: str) -> int:
    """An optional categorical cell: empty (or NaN) -> MISSING, anything else must be an int."""
    stripped = value.strip()
    if not stripped or stripped.lower() == "nan":
        return MISSING
    return to_int(stripped, column)


def to_timestamp_ms(value: str, column: str) -> int:
    value = value.strip()
    if not value:
        raise MalformedRow(f"empty:{column}")
    # float() would also take "1_000" and non-ASCII digits.
    if not value.isascii() or "_" in value:
        raise MalformedRow(f"bad_timestamp:{column}")
    try:
        number = float(value)  # KuaiSAR stores ms timestamps as floats ("1.684742e+12")
    except ValueError:
        raise MalformedRow(f"bad_timestamp:{column}") from None
    if not 0 <= number <= 1e14:  # negative, NaN, infinite, or past the year 5000
        raise MalformedRow(f"bad_timestamp:{column}")
    return int(number)


def parse_id_list(value: str, column: str) -> tuple[int, ...]:
    """Parses KuaiSAR's list cells, e.g. "[20, 34, 3]"; an empty list is malformed."""
    text = value.strip()
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        raise MalformedRow(f"bad_list:{column}")
    body = text[1:-1].strip()
    if not body:
        raise MalformedRow(f"empty_list:{column}")
    try:
        return tuple(to_int(part, column) for part in body.split(","))
    except MalformedRow as error:  # a word id out of the int64 range keeps its own reason
        if error.reason.startswith("out_of_range:"):
            raise
        raise MalformedRow(f"bad_list:{column}") from None


def query_key(words: Sequence[int]) -> str:
    """The canonical identity of a query: its word ids joined by '_' ("20_34_3")."""
    return "_".join(str(w) for w in words)


class LineParser:
    """Parses the data lines of one file, given its header. Picklable, so Beam can ship it."""

    def __init__(self, header: Header):
        self.file = header.file
        self.width = len(header.names)
        self._idx = {name: i for i, name in enumerate(header.names)}

    def __call__(self, line: bytes | str) -> tuple:
        fields = split_fields(line, self.width)
        return getattr(self, "_" + self.file)(fields)

    def _rec_inter(self, f: list[str]) -> tuple[int, tuple[int, int, int]]:
        """-> (user_id, (timestamp_ms, item_id, click))"""
        i = self._idx
        click = to_int(f[i["click"]], "click")
        if click > 1:
            raise MalformedRow("bad_label:click")
        return to_int(f[i["user_id"]], "user_id"), (
            to_timestamp_ms(f[i["timestamp"]], "timestamp"), to_int(f[i["item_id"]], "item_id"),
            click)

    def _src_inter(self, f: list[str]) -> tuple[int, tuple[int, int, tuple[int, ...], int, int]]:
        """-> (user_id, (timestamp_ms, search_session_id, keyword_word_ids, item_id, clicked))"""
        i = self._idx
        return to_int(f[i["user_id"]], "user_id"), (
            to_timestamp_ms(f[i["search_session_timestamp"]], "search_session_timestamp"),
            to_int(f[i["search_session_id"]], "search_session_id"),
            parse_id_list(f[i["keyword"]], "keyword"),
            to_int(f[i["item_id"]], "item_id"),
            1 if to_int(f[i["click_cnt"]], "click_cnt") > 0 else 0,
        )

    def _user_features(self, f: list[str]) -> tuple[int, tuple[int, int, int, int]]:
        """-> (user_id, (search_active_level, rec_active_level, onehot_feat1, onehot_feat2))"""
        i = self._idx
        return to_int(f[i["user_id"]], "user_id"), tuple(
            to_optional_int(f[i[c]], c) for c in REQUIRED_COLUMNS[USER_FEATURES][1:])

    def _item_features(self, f: list[str]) -> tuple[int, tuple[int, int, int]]:
        """-> (item_id, (author_id, first_level_category_id, second_level_category_id))"""
        i = self._idx
        return to_int(f[i["item_id"]], "item_id"), tuple(
            to_optional_int(f[i[c]], c) for c in REQUIRED_COLUMNS[ITEM_FEATURES][1:])


def beijing_time(timestamp_ms: int) -> str:
    """KuaiSAR's human-readable `time` column for a ms timestamp."""
    moment = datetime.datetime.fromtimestamp(timestamp_ms / 1000, BEIJING)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
