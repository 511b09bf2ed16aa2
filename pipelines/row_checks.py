"""Rows that parse but must not be used as they are (issue 31), and input checks run before the job.

- `dedupe`: exact duplicate rows (equal in every column the job reads: replayed log lines) are
  counted, and dropped unless --keep-duplicate-rows.
- `distinct_held_out`: a user's valid and test rows are two different interactions: the last
  two distinct (timestamp, item_id) impressions, one row each.
- `resolve_item_rows`: one item_features row per item, by one documented rule (CHOSEN_ITEM_ROW),
  used for the examples, item_categories.tsv and the vocabularies alike.
- `check_timestamp_units`: feed and search timestamps in seconds instead of milliseconds (the
  first SAMPLE_ROWS data lines of each file against its datetime column and against each other).

Plain Python (no Beam transforms): the units under test; pipelines.build_tfrecords applies them.
"""

from __future__ import annotations

import datetime
import statistics
from typing import Hashable, Sequence, TypeVar

from pipelines import kuaisar
from pipelines.beam_support import InputError

Row = TypeVar("Row", bound=Hashable)

CHOSEN_ITEM_ROW = ("of an item's differing item_features rows the one with the fewest missing "
                   "values is used, then the smallest (author_id, first_level_category_id, "
                   "second_level_category_id)")


def dedupe(rows: Sequence[Row], keep: bool = False) -> tuple[list[Row], int]:
    """(rows without exact duplicates, in first-seen order, or all rows with `keep`; how many rows
    repeat an earlier one)."""
    unique = list(dict.fromkeys(rows))
    return (list(rows) if keep else unique), len(rows) - len(unique)


def distinct_held_out(rec_sorted: Sequence[tuple[int, int, int]]
                      ) -> tuple[list[tuple[int, int, int]], int]:
    """A user's feed rows, sorted by (timestamp, item_id, click), with each of the last two
    distinct (timestamp, item_id) interactions reduced to one row, the last (a clicked one when
    the log has it both clicked and not): leave-one-out then never holds out one interaction as
    both valid and test. Returns (rows, rows removed)."""
    rows = list(rec_sorted)
    removed, end = 0, len(rows)
    for _ in range(2):   # the test interaction, then the valid one
        if end == 0:
            break
        key = rows[end - 1][:2]
        start = end - 1
        while start > 0 and rows[start - 1][:2] == key:
            start -= 1
        removed += end - 1 - start
        del rows[start:end - 1]
        end = start   # the kept row is now at `start`; the next interaction ends before it
    return rows, removed


def resolve_item_rows(rows: Sequence[tuple[int, int, int]]
                      ) -> tuple[tuple[int, int, int], int, int]:
    """One item's parsed item_features rows -> (the row used (CHOSEN_ITEM_ROW), exact duplicate
    rows, rows that differ from the one used)."""
    distinct, duplicates = dedupe(rows)
    chosen = min(distinct, key=lambda f: (sum(v == kuaisar.MISSING for v in f), f))
    return chosen, duplicates, len(distinct) - 1


# --- timestamp units -------------------------------------------------------------------------
SAMPLE_ROWS = 1_000
DAY_MS = 86_400_000
# (file, timestamp column, its datetime column)
TIME_COLUMNS = ((kuaisar.REC_INTER, "timestamp", "time"),
                (kuaisar.SRC_INTER, "search_session_timestamp", "search_session_time"))
# Medians of the two files' timestamps this many times apart: one file is not in milliseconds.
UNIT_RATIO = 100.0


def _datetime_ms(text: str) -> float | None:
    """KuaiSAR's Beijing datetime ("2023-05-22 16:00:00") in ms; None when it is not one."""
    try:
        moment = datetime.datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return moment.replace(tzinfo=kuaisar.BEIJING).timestamp() * 1000


def sample_times(lines: Sequence[bytes], header: kuaisar.Header, column: str, time_column: str
                 ) -> tuple[list[float], int, int]:
    """(timestamps, rows whose datetime matches the timestamp read as ms, rows where it matches
    only when read as seconds) over the parseable `lines`."""
    stamps, as_ms, as_seconds = [], 0, 0
    has_time = time_column in header.names
    for line in lines:
        try:
            fields = kuaisar.split_fields(line, len(header.names))
            ts = float(kuaisar.to_timestamp_ms(fields[header.index(column)], column))
        except (kuaisar.MalformedRow, ValueError):
            continue  # the job dead-letters it
        stamps.append(ts)
        when = _datetime_ms(fields[header.index(time_column)]) if has_time else None
        if when is None:
            continue
        if abs(ts - when) <= DAY_MS:
            as_ms += 1
        elif abs(ts * 1000 - when) <= DAY_MS:
            as_seconds += 1
    return stamps, as_ms, as_seconds


def check_timestamp_units(samples: dict[str, tuple[kuaisar.Header, Sequence[bytes]]]) -> None:
    """Raises InputError naming the column when a file's timestamps are in seconds: most sampled
    rows match their datetime column only when read as seconds, or the two files' median
    timestamps are UNIT_RATIO or more apart. `samples`: file -> (header, first data lines)."""
    medians = {}
    for file, column, time_column in TIME_COLUMNS:
        if file not in samples:
            continue
        header, lines = samples[file]
        stamps, as_ms, as_seconds = sample_times(lines, header, column, time_column)
        if as_seconds > as_ms:
            raise InputError(
                f"{file}: column {column} holds seconds, not milliseconds: {as_seconds:,} of the "
                f"first {len(lines):,} rows match column {time_column} only when read as "
                "seconds; write the timestamps in milliseconds (x1000)")
        positive = [ts for ts in stamps if ts > 0]
        if positive:
            medians[file, column] = statistics.median(positive)
    if len(medians) == 2:
        (small, low), (large, high) = sorted(medians.items(), key=lambda kv: kv[1])
        if high / low >= UNIT_RATIO:
            raise InputError(
                f"{small[0]}: column {small[1]} (median {low:.4g}) is {high / low:,.0f}x smaller "
                f"than {large[0]}'s {large[1]} (median {high:.4g}): both must be milliseconds "
                "(seconds in one file?)")
