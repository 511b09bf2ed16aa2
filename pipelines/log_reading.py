"""Reading KuaiSAR-format logs in Beam, shared by both jobs (build_tfrecords, analysis).

`find_input` locates and checks one input file and its header; `read_logs` reads every input
(a .csv.gz with Python's gzip, so that a cut or corrupt stream fails the job instead of ending
it silently; a .gz and the feature tables quote-aware, so that a quoted line break stays in its
record), skips and counts blank lines, parses the records, writes rejected ones to
dead_letter/ and counts records read, used and rejected per file; `group_by_user` joins the
user-keyed logs; `sum_then_flatten` and `nest_keys` turn (key, count) statistics into
stats.json's nested form.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import time
import zlib
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import kuaisar
from pipelines.beam_support import InputError
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.log_reading")

# What Python's gzip raises for a cut (EOFError), corrupt (zlib.error, BadGzipFile: CRC or length
# check) or non-gzip (BadGzipFile, an OSError) stream. Beam's own decompression stops silently at
# a cut, so .gz inputs are read with Python's gzip (ReadGzipLines).
GZIP_ERRORS = (OSError, EOFError, zlib.error)


def gzip_error_reason(error: BaseException) -> str:
    """The input-error reason of one of GZIP_ERRORS."""
    return "gzip_truncated" if isinstance(error, EOFError) else "gzip_corrupt"


@contextlib.contextmanager
def open_gzip(path: str) -> Iterator[gzip.GzipFile]:
    """A .gz file on any Beam filesystem, decompressed by Python's gzip module (both closed)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw, \
            gzip.GzipFile(fileobj=raw, mode="rb") as f:
        yield f


def find_input(input_dir: str, name: str) -> tuple[str, kuaisar.Header]:
    """The one file `name`.csv or `name`.csv.gz in input_dir, and its parsed header."""
    found = []
    for suffix in (".csv", ".csv.gz"):
        path = FileSystems.join(input_dir, name + suffix)
        if FileSystems.exists(path):
            found.append(path)
    if not found:
        # Object stores have no directories to test, so only a local one is checked.
        if FileSystems.get_scheme(input_dir) is None and not os.path.isdir(input_dir):
            raise InputError(f"input directory {input_dir} does not exist")
        raise InputError(f"{name}.csv (or {name}.csv.gz) not found in {input_dir}")
    if len(found) > 1:
        raise InputError(f"both {found[0]} and {found[1]} exist: keep one")
    path = found[0]
    try:
        with (open_gzip(path) if path.endswith(".gz") else FileSystems.open(path)) as f:
            first = f.readline()
    except GZIP_ERRORS as error:
        raise InputError(f"{path} is not a readable gzip file ({type(error).__name__}: "
                         f"{error})") from None
    if not first.strip():
        raise InputError(f"{path} is empty: expected a header line")
    try:
        header = kuaisar.parse_header(name, first)
    except kuaisar.MalformedRow as error:
        raise InputError(f"{path}: the first line is not a CSV header ({error.reason})") from None
    if header.duplicates():
        raise InputError(f"{path}: header repeats column(s) {header.duplicates()}; found "
                         f"{list(header.names)}")
    if header.missing():
        raise InputError(f"{path}: header lacks column(s) {header.missing()}; found "
                         f"{list(header.names)}")
    return path, header


def sample_lines(path: str, count: int) -> list[bytes]:
    """The first `count` data lines of an input file (without the header and line breaks), for
    the checks that run before the job (row_checks.check_timestamp_units)."""
    lines = []
    try:
        with (open_gzip(path) if path.endswith(".gz") else FileSystems.open(path)) as f:
            f.readline()
            for line in f:
                if len(lines) >= count:
                    break
                lines.append(line.rstrip(b"\r\n"))
    except GZIP_ERRORS:
        pass  # the job reads the file again and reports the error naming it
    return lines


# A record that a quoted field spreads over several lines is joined up to this many lines (a
# caption with line breaks); a quote left open longer ends the record there (a dead letter).
MAX_RECORD_LINES = 1_000
# Read by ReadRecords (quote-aware: a quoted line break stays inside its record) also when not
# compressed: the tables with free-text columns (captions, category names). The two logs (ids,
# times and keyword lists only, and by far the largest files) are split across workers by
# ReadFromText, which cuts records at every line break.
QUOTE_AWARE_FILES = (kuaisar.ITEM_FEATURES, kuaisar.USER_FEATURES)


def join_quoted(lines: Iterator[bytes]) -> Iterator[bytes]:
    """Lines (without line breaks) -> CSV records: a line that leaves a double quote open is
    joined with the next ones ("\n" between them) until the quotes balance, for at most
    MAX_RECORD_LINES lines or MAX_FIELD_CHARS characters."""
    pending: list[bytes] = []
    quotes = size = 0
    for line in lines:
        pending.append(line)
        quotes += line.count(b'"')
        size += len(line)
        if quotes % 2 == 0 or len(pending) >= MAX_RECORD_LINES or size > kuaisar.MAX_FIELD_CHARS:
            yield b"\n".join(pending)
            pending, quotes, size = [], 0, 0
    if pending:
        yield b"\n".join(pending)


class ReadRecords(beam.DoFn):
    """An input path -> its CSV records (bytes, without the line break; the header is skipped),
    quote-aware (join_quoted). A .gz is read with Python's gzip: a stream that is cut or corrupt
    ends the file's records with one "input_error" output, (file, reason, message naming the
    path), so the job fails instead of using half the file. One worker reads a file, as Beam's
    ReadFromText does for a gzip file (which cannot be split).
    """

    ERROR = "input_error"

    def __init__(self, file: str):
        self._file = file

    def process(self, path: str):
        lines = 0

        def data_lines(f):
            nonlocal lines
            f.readline()  # the header, checked by find_input
            for line in f:
                # Like ReadFromText: the line without its "\n" or "\r\n".
                line = line[:-1] if line.endswith(b"\n") else line
                lines += 1
                yield line[:-1] if line.endswith(b"\r") else line

        try:
            with (open_gzip(path) if path.endswith(".gz") else FileSystems.open(
                    path, compression_type=CompressionTypes.UNCOMPRESSED)) as f:
                yield from join_quoted(data_lines(f))
        except GZIP_ERRORS as error:
            message = (f"{path}: {type(error).__name__}: {error} (after {lines:,} data lines)")
            LOG.error("%s", message)
            yield beam.pvalue.TaggedOutput(
                self.ERROR, (self._file, gzip_error_reason(error), message.encode("utf-8")))


class ParseLines(beam.DoFn):
    """Raw line -> parsed record, or a dead letter ("dead" output) with its reason."""

    DEAD = "dead"

    def __init__(self, header: kuaisar.Header):
        self._parser = kuaisar.LineParser(header)
        self._file = header.file
        self._rows = 0
        self._last_log = 0.0

    def process(self, line: bytes):
        self._rows += 1
        if self._rows % 200_000 == 0 and time.monotonic() - self._last_log > 10:
            self._last_log = time.monotonic()
            LOG.info("%s: parsed %s rows so far (this worker)", self._file, f"{self._rows:,}")
        try:
            yield self._parser(line)
        except kuaisar.MalformedRow as error:
            yield beam.pvalue.TaggedOutput(self.DEAD, (self._file, error.reason, line))


def dead_letter_json(record: tuple[str, str, bytes]) -> str:
    file, reason, line = record
    return json.dumps({"file": file, "reason": reason,
                       "line": line.decode("utf-8", errors="backslashreplace")},
                      ensure_ascii=False)


def sum_then_flatten(label: str, branches: list[beam.PCollection]) -> beam.PCollection:
    """Flattens (key, count) branches after summing each one.

    The runner materialises a Flatten's inputs element by element; a lifted CombinePerKey in each
    producing stage first shrinks a branch to one element per key (600k item-feature counts to a
    few thousand, for instance).
    """
    return ([branch | f"Pre-sum {label} {i}" >> beam.CombinePerKey(sum)
             for i, branch in enumerate(branches)]
            | f"Flatten {label}" >> beam.Flatten())


def read_logs(pipeline: beam.Pipeline, inputs: dict[str, tuple[str, kuaisar.Header]], output: str
              ) -> tuple[dict[str, beam.PCollection], list[beam.PCollection]]:
    """Reads and parses each input file; rejected lines go to `output`/dead_letter/.

    Returns the parsed rows per file (kuaisar.LineParser's tuples) and (key, count) statistics
    branches: `<file>/rows_read` (records, blank lines not included), `rows_used`,
    `rows_rejected`, `<file>/blank_lines` (when there are any),
    `<file>/rejected_by_reason/<reason>` and, for a cut or corrupt .csv.gz,
    `<file>/input_errors/<reason>` (its lines before the error are read as usual).
    """
    stats = []
    parsed = {}
    dead_letters = []   # rejected lines, counted by reason
    input_errors = []   # cut or corrupt files, counted apart (they are not lines)
    for name, (path, header) in inputs.items():
        if path.endswith(".gz") or name in QUOTE_AWARE_FILES:
            read = (pipeline | f"Path {name}" >> beam.Create([path])
                    | f"Read {name}" >> beam.ParDo(ReadRecords(name)).with_outputs(
                        ReadRecords.ERROR, main="lines"))
            lines = read.lines
            stats.append(read[ReadRecords.ERROR] | f"Key input errors {name}" >> beam.Map(
                lambda e: (f"{e[0]}/input_errors/{e[1]}", 1)))
            input_errors.append(read[ReadRecords.ERROR])
        else:
            lines = pipeline | f"Read {name}" >> beam.io.ReadFromText(
                path, skip_header_lines=1, coder=BytesCoder())
        # A blank line (or one of spaces) is no record: skipped and counted apart.
        records = lines | f"Records {name}" >> beam.Filter(lambda line: bool(line.strip()))
        stats.append(lines | f"Blank lines {name}" >> beam.Filter(lambda line: not line.strip())
                     | f"Count blank lines {name}" >> beam.combiners.Count.Globally()
                     | f"Key blank lines {name}" >> beam.FlatMap(
                         lambda n, k=f"{name}/blank_lines": [(k, n)] if n else []))
        results = records | f"Parse {name}" >> beam.ParDo(ParseLines(header)).with_outputs(
            ParseLines.DEAD, main="rows")
        parsed[name] = results.rows
        dead_letters.append(results[ParseLines.DEAD])
        for what, pcoll in (("rows_read", records), ("rows_used", results.rows),
                            ("rows_rejected", results[ParseLines.DEAD])):
            stats.append(pcoll | f"Count {what} {name}" >> beam.combiners.Count.Globally()
                         | f"Key {what} {name}" >> beam.Map(lambda n, k=f"{name}/{what}": (k, n)))

    dead = dead_letters | "Flatten dead letters" >> beam.Flatten()
    stats.append(dead | "Reject reasons" >> beam.Map(
        lambda d: (f"{d[0]}/rejected_by_reason/{d[1]}", 1)))
    _ = ([dead, *input_errors] | "Flatten dead letters and input errors" >> beam.Flatten()
         | "Dead letter JSON" >> beam.Map(dead_letter_json)
         | "Write dead letters" >> beam.io.WriteToText(
             FileSystems.join(output, S.DEAD_LETTER_DIR, "dead_letter"),
             file_name_suffix=".jsonl"))
    return parsed, stats


def group_by_user(parsed: dict[str, beam.PCollection], names: Sequence[str]) -> beam.PCollection:
    """(user_id, {name: [rows]}) for the user-keyed logs `names`; a name's list is absent (an
    empty iterable) when the user has no row in that log, else `logs[name][0]` holds all rows."""
    # Pack each log into per-user lists *before* joining: runners lift these combines into the
    # reading stage, so a user's rows cross the shuffle as one element rather than one each.
    # (A Flatten or CoGroupByKey of the raw rows would move every row separately: 2x slower.)
    per_user = {
        name: parsed[name] | f"Pack {name} per user" >> beam.CombinePerKey(
            beam.combiners.ToListCombineFn())
        for name in names}
    return per_user | "Join per user" >> beam.CoGroupByKey()


def nest_keys(flat: dict[str, int]) -> dict:
    """{"a/b/c": 1} -> {"a": {"b": {"c": 1}}}."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
