"""KuaiSAR-format CSV logs -> feed examples (TFRecords), vocabularies, query->items table, stats.

    python -m pipelines.build_tfrecords --input DIR --output DIR [flags] [Beam pipeline options]

Input: DIR/{rec_inter,src_inter,user_features,item_features}.csv (or .csv.gz) on any Beam
filesystem. Output (see qrec_tf/schema.py for the names):

    schema.json                  sequence lengths used (qrec_tf.schema.Schema.load reads it)
    train/ valid/ test/          gzip TFRecord shards of tf.train.Example, one per feed impression
    search_train/                with --search-examples only: one example per search impression of
                                 a user's training period (the auxiliary task of PLE)
    vocab/<name>.txt             "value<TAB>count", most frequent first, count >= --min-count
    query_items/                 gzip TFRecords: per query, items clicked after it (with counts)
                                 and items shown after it but never clicked
    stats.json                   per input file rows read/used/rejected (+ reasons); users kept and
                                 dropped; examples and CTR per split; queries with a click; search
                                 impressions of kept users not made examples (--search-examples)
    dead_letter/                 JSON lines {"file", "reason", "line"}, one per rejected line (and
                                 per cut or corrupt .csv.gz, with the error as "line")

Accounting: for every input file rows_read == rows_used + rows_rejected, where a rejected row is
a line that cannot be parsed (it is in dead_letter/ with its reason). Rows of users dropped for
lacking a search or a feed history are parsed and used for the search tables; they are reported in
stats.json as `rows_of_dropped_users`, never silently. A .csv.gz that is cut short or corrupt is
counted as `<file>/input_errors/<reason>` (and dead-lettered with the error).

Outputs are written into a staging directory inside --output and swapped in only when the job
succeeded (StagedOutput). The job fails (exit 1), leaving --output's earlier outputs as they were
and this run's in --output/failed_run/ for inspection, when a compressed input is cut or corrupt,
when a file's rejected share exceeds --max-rejected-fraction, or when there is no training example.

Vocabulary counts: users = feed interactions of kept users; items = feed interactions of kept users
plus search impressions; queries = search sessions; words = word occurrences in search sessions;
categories/subcategories/authors = rows of item_features; user-feature vocabularies = kept users.

Runs locally on pipelines.beam_support.LocalRunner (the DirectRunner's FnApiRunner without its
Prism attempt; one worker process per core; --direct_running_mode=in_memory for a single process)
unless --runner is given; all other Beam options (--runner=DataflowRunner --project ... /
PortableRunner / FlinkRunner / SparkRunner) pass through unchanged (README, "Running on a
cluster"). With --num-shards N the example shards are byte-identical across runs and runners.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import json
import logging
import os
import sys
import time
import uuid
import zlib
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from pipelines import kuaisar
from pipelines.beam_support import LOCAL_RUNNER, WriteSortedShards
from pipelines.user_examples import QueryItems, build_user_examples, query_items_of, sessions_of
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.build_tfrecords")
PROG = "python -m pipelines.build_tfrecords"
OUTPUT_DIRS = (*S.EXAMPLE_SPLITS, S.VOCAB_DIR, S.QUERY_ITEMS_DIR, S.DEAD_LETTER_DIR)
# Locally: Beam's FnApiRunner with one worker process per core. On the 1M-row benchmark this ran
# 1.7x faster than the single-process in_memory mode on 2 cores (benchmarks/pipeline_throughput.py).
# The runner is named explicitly: Beam's DirectRunner would first try to download Prism.
LOCAL_DEFAULTS = [f"--runner={LOCAL_RUNNER}", "--direct_running_mode=multi_processing",
                  f"--direct_num_workers={os.cpu_count() or 1}",
                  "--default_sdk_harness_log_level=WARNING",
                  '--sdk_harness_log_level_overrides={"pipelines": "INFO"}']


class InputError(ValueError):
    """A user mistake in the job's input or flags, reported without a traceback."""


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


# --- input discovery -------------------------------------------------------------------------
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


# --- transforms ------------------------------------------------------------------------------
class ReadGzipLines(beam.DoFn):
    """A .csv.gz path -> its data lines (bytes, without the line break; the header is skipped).

    A stream that is cut or corrupt ends the file's lines with one "input_error" output,
    (file, reason, message naming the path), so the job fails instead of using half the file.
    A gzip file cannot be split, so one worker reads it, as Beam's ReadFromText would.
    """

    ERROR = "input_error"

    def __init__(self, file: str):
        self._file = file

    def process(self, path: str):
        lines = 0
        try:
            with open_gzip(path) as f:
                f.readline()  # the header, checked by find_input
                for line in f:
                    # Like ReadFromText: the line without its "\n" or "\r\n".
                    line = line[:-1] if line.endswith(b"\n") else line
                    yield line[:-1] if line.endswith(b"\r") else line
                    lines += 1
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


class BuildUserExamples(beam.DoFn):
    """(user_id, (rec, search, user features)) -> serialized examples per split, plus
    vocabulary counts, query->items partials and statistics."""

    VOCAB, QUERY_ITEMS, STATS = "vocab", "query_items", "stats"

    def __init__(self, schema: S.Schema, seed: int, search_examples: bool = False):
        self._schema = schema
        self._seed = seed
        self._search_examples = search_examples
        self._serializer = None
        self._users = 0
        self._last_log = 0.0

    def setup(self):
        self._serializer = S.ExampleSerializer(self._schema)

    def start_bundle(self):
        # Vocabulary and statistics counts are summed per bundle here and emitted once per key
        # in finish_bundle: emitting them per user moved ~3 elements per input row through the
        # runner.
        self._vocab = collections.Counter()
        self._stats = collections.Counter()

    def process(self, element, items):
        user_id, logs = element
        rec = logs[kuaisar.REC_INTER][0] if logs[kuaisar.REC_INTER] else []
        search = logs[kuaisar.SRC_INTER][0] if logs[kuaisar.SRC_INTER] else []
        features = logs[kuaisar.USER_FEATURES][0] if logs[kuaisar.USER_FEATURES] else []
        vocab, stats = self._vocab, self._stats
        if len(features) > 1:
            stats["users/duplicate_feature_rows"] += len(features) - 1
        # Search-side tables use every parsed search row, kept user or not: they describe queries.
        for key, partial in query_items_of(search).items():
            yield beam.pvalue.TaggedOutput(self.QUERY_ITEMS, (key, partial))
        for session in sessions_of(search):
            vocab[S.VOCAB_QUERIES, session.key] += 1
            for word in session.words:
                vocab[S.VOCAB_WORDS, str(word)] += 1
        for row in search:
            vocab[S.VOCAB_ITEMS, str(row[3])] += 1

        if not rec or not search:
            reason = ("no_rec_and_no_search" if not rec and not search
                      else "no_search_history" if rec else "no_rec_history")
            stats[f"users/dropped/{reason}"] += 1
            stats[f"{kuaisar.REC_INTER}/rows_of_dropped_users"] += len(rec)
            stats[f"{kuaisar.SRC_INTER}/rows_of_dropped_users"] += len(search)
            return

        self._users += 1
        if self._users % 5_000 == 0 and time.monotonic() - self._last_log > 10:
            self._last_log = time.monotonic()
            LOG.info("built examples for %s users so far (this worker)", f"{self._users:,}")
        stats["users/kept"] += 1
        user_features = features[0] if features else None
        if user_features is None:
            stats["users/kept_without_features_row"] += 1
        else:
            for name, value in zip(
                    (S.VOCAB_SEARCH_ACTIVE_LEVELS, S.VOCAB_REC_ACTIVE_LEVELS, S.VOCAB_ONEHOT_FEAT1,
                     S.VOCAB_ONEHOT_FEAT2), user_features):
                if value != kuaisar.MISSING:
                    vocab[name, str(value)] += 1
        vocab[S.VOCAB_USERS, str(user_id)] += len(rec)
        for row in rec:
            vocab[S.VOCAB_ITEMS, str(row[1])] += 1

        search_examples = 0
        for split, values in build_user_examples(user_id, rec, search, user_features, items,
                                                 self._schema, self._seed, self._search_examples):
            stats[f"examples/{split}/count"] += 1
            stats[f"examples/{split}/clicks"] += values[S.LABEL]
            stats[f"examples/{split}/with_queries"] += values[S.QUERY_KEYS][-1] != ""
            search_examples += split == S.SEARCH_TRAIN
            yield beam.pvalue.TaggedOutput(split, self._serializer.serialize(values))
        if self._search_examples:
            # Every search row of a kept user is an example or counted here (a zero count still
            # puts the entries into stats.json).
            stats[f"examples/{S.SEARCH_TRAIN}/count"] += 0
            stats["search_examples/outside_training_period"] += len(search) - search_examples

    def finish_bundle(self):
        for tag, counts in ((self.VOCAB, self._vocab), (self.STATS, self._stats)):
            for key, count in counts.items():
                yield beam.pvalue.TaggedOutput(tag, GlobalWindows.windowed_value((key, count)))


class MergeQueryItems(beam.CombineFn):
    def create_accumulator(self):
        return None

    def add_input(self, accumulator, partial: QueryItems):
        if accumulator is None:
            return QueryItems(partial.words, collections.Counter(partial.clicks),
                              set(partial.shown), partial.sessions)
        return accumulator.merge(partial)

    def merge_accumulators(self, accumulators):
        merged = None
        for acc in accumulators:
            if acc is not None:
                merged = self.add_input(merged, acc)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _sort_key(value_count: tuple[str, int]):
    value, count = value_count
    return (-count, 0, int(value), "") if value.lstrip("-").isdigit() else (-count, 1, 0, value)


class WriteVocab(beam.DoFn):
    def __init__(self, vocab_dir: str):
        self._dir = vocab_dir

    def process(self, element):
        name, rows = element
        rows = sorted(rows, key=_sort_key)
        with FileSystems.create(FileSystems.join(self._dir, name + ".txt")) as f:
            f.write("".join(f"{value}\t{count}\n" for value, count in rows).encode("utf-8"))
        yield f"vocab/{name}", len(rows)


class WriteJson(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, stats: dict):
        with FileSystems.create(self._path) as f:
            f.write(json.dumps(nest_stats(stats), indent=2, sort_keys=True).encode("utf-8"))
        yield self._path


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


def nest_stats(flat: dict[str, int]) -> dict:
    """nest_keys(flat) plus derived rates."""
    nested = nest_keys(flat)
    examples = nested.setdefault("examples", {})
    for split in (*S.SPLITS, *([S.SEARCH_TRAIN] if S.SEARCH_TRAIN in examples else [])):
        entry = examples.setdefault(split, {})
        if not isinstance(entry, dict):
            continue
        n = entry.get("count", 0)
        entry["ctr"] = entry.get("clicks", 0) / n if n else None
    qi = nested.get("query_items", {})
    if qi.get("queries"):
        qi["share_with_click"] = qi.get("queries_with_click", 0) / qi["queries"]
    return nested


# --- the pipeline ----------------------------------------------------------------------------
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
    branches: `<file>/rows_read`, `rows_used`, `rows_rejected`,
    `<file>/rejected_by_reason/<reason>` and, for a cut or corrupt .csv.gz,
    `<file>/input_errors/<reason>` (its lines before the error are read as usual).
    """
    stats = []
    parsed = {}
    dead_letters = []   # rejected lines, counted by reason
    input_errors = []   # cut or corrupt files, counted apart (they are not lines)
    for name, (path, header) in inputs.items():
        if path.endswith(".gz"):
            read = (pipeline | f"Path {name}" >> beam.Create([path])
                    | f"Read {name}" >> beam.ParDo(ReadGzipLines(name)).with_outputs(
                        ReadGzipLines.ERROR, main="lines"))
            lines = read.lines
            stats.append(read[ReadGzipLines.ERROR] | f"Key input errors {name}" >> beam.Map(
                lambda e: (f"{e[0]}/input_errors/{e[1]}", 1)))
            input_errors.append(read[ReadGzipLines.ERROR])
        else:
            lines = pipeline | f"Read {name}" >> beam.io.ReadFromText(
                path, skip_header_lines=1, coder=BytesCoder())
        results = lines | f"Parse {name}" >> beam.ParDo(ParseLines(header)).with_outputs(
            ParseLines.DEAD, main="rows")
        parsed[name] = results.rows
        dead_letters.append(results[ParseLines.DEAD])
        for what, pcoll in (("rows_read", lines), ("rows_used", results.rows),
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


def build_pipeline(pipeline: beam.Pipeline, inputs: dict[str, tuple[str, kuaisar.Header]],
                   output: str, schema: S.Schema, *, seed: int, min_count: int, num_shards: int,
                   search_examples: bool = False) -> None:
    parsed, stats = read_logs(pipeline, inputs, output)
    items = parsed[kuaisar.ITEM_FEATURES]
    by_user = group_by_user(parsed, (kuaisar.REC_INTER, kuaisar.SRC_INTER, kuaisar.USER_FEATURES))
    built = by_user | "Build examples" >> beam.ParDo(
        BuildUserExamples(schema, seed, search_examples),
        items=beam.pvalue.AsDict(items)).with_outputs(
            BuildUserExamples.VOCAB, BuildUserExamples.QUERY_ITEMS, BuildUserExamples.STATS,
            *S.EXAMPLE_SPLITS)
    stats.append(built[BuildUserExamples.STATS])

    for split in (*S.SPLITS, *([S.SEARCH_TRAIN] if search_examples else [])):
        prefix = FileSystems.join(output, split, split)
        # A fixed shard count writes byte-identical shards on any runner and in any run.
        _ = built[split] | f"Write {split}" >> (
            WriteSortedShards(prefix, num_shards) if num_shards else beam.io.WriteToTFRecord(
                prefix, file_name_suffix=".tfrecord.gz", compression_type=CompressionTypes.GZIP))

    table = (built[BuildUserExamples.QUERY_ITEMS]
             | "Merge query items" >> beam.CombinePerKey(MergeQueryItems()))
    stats.append(table | "Query stats" >> beam.FlatMap(lambda kv: [
        ("query_items/queries", 1),
        ("query_items/queries_with_click", 1 if kv[1].clicks else 0),
        ("query_items/sessions", kv[1].sessions),
        ("query_items/sessions_of_queries_with_click", kv[1].sessions if kv[1].clicks else 0)]))
    _ = (table | "Serialize query items" >> beam.Map(lambda kv: S.query_items_example(
            kv[0], kv[1].words, kv[1].clicks, kv[1].shown - set(kv[1].clicks), kv[1].sessions))
         | "Write query items" >> beam.io.WriteToTFRecord(
             FileSystems.join(output, S.QUERY_ITEMS_DIR, "query_items"),
             file_name_suffix=".tfrecord.gz", compression_type=CompressionTypes.GZIP))

    item_vocab_counts = items | "Item feature vocab" >> beam.FlatMap(lambda kv: [
        ((vocab, str(value)), 1)
        for vocab, value in zip((S.VOCAB_AUTHORS, S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES), kv[1])
        if value != kuaisar.MISSING])
    vocab_sizes = (sum_then_flatten("vocab counts", [built[BuildUserExamples.VOCAB],
                                                     item_vocab_counts])
                   | "Sum vocab counts" >> beam.CombinePerKey(sum)
                   | "Min count" >> beam.Filter(lambda kv: kv[1] >= min_count)
                   | "Key by vocab" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
                   | "Group vocab" >> beam.GroupByKey()
                   | "Write vocab" >> beam.ParDo(
                       WriteVocab(FileSystems.join(output, S.VOCAB_DIR))))
    stats.append(vocab_sizes)

    _ = (sum_then_flatten("stats", stats)
         | "Sum stats" >> beam.CombinePerKey(sum)
         | "Stats dict" >> beam.combiners.ToDict()
         | "Write stats" >> beam.ParDo(WriteJson(FileSystems.join(output, S.STATS_FILE))))


# --- command line ----------------------------------------------------------------------------
# Shards per split: up to this many training workers read whole files (qrec_tf.data.Sharding).
DEFAULT_NUM_SHARDS = 8


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=BEAM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="directory with the KuaiSAR CSV files")
    parser.add_argument("--output", required=True, help="output directory (any Beam filesystem)")
    lengths = S.Schema()  # the schema owns the defaults
    for flag, field, help_text in (
            ("--history-length", "history_length", "feed-clicked items kept before t"),
            ("--max-queries", "max_queries", "queries kept before t"),
            ("--max-query-words", "max_query_words", "word ids stored per query"),
            ("--nip-positives", "nip_positives", "clicked items sampled after t per train example"),
            ("--nip-negatives", "nip_negatives",
             "not-clicked items sampled after t per train example"),
            ("--query-clicked-items", "query_clicked_items",
             "items clicked in a query's session kept per query (SESRec)")):
        default = getattr(lengths, field)
        parser.add_argument(flag, dest=field, type=int, default=default,
                            help=f"{help_text} (default {default})")
    parser.add_argument("--min-count", type=int, default=1,
                        help="vocabulary entries seen fewer times map to OOV (default 1)")
    parser.add_argument("--max-rejected-fraction", type=float, default=0.01,
                        help="fail when a file's rejected share exceeds this (default 0.01)")
    # Multi-worker training reads whole shards per worker when a split has at least as many
    # shards as workers (qrec_tf.data.Sharding); the runner's choice is often a single file.
    parser.add_argument("--num-shards", type=int, default=DEFAULT_NUM_SHARDS,
                        help="shards per split (default %d): up to this many training workers "
                             "read whole files; N > 0 writes each split as N shards "
                             "byte-identical across runs and runners, each shard sorted in one "
                             "worker's memory; 0: the runner decides" % DEFAULT_NUM_SHARDS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the NIP target sampling")
    parser.add_argument("--search-examples", action="store_true",
                        help="also write search impressions of each user's training period to "
                             f"{S.SEARCH_TRAIN}/ (the auxiliary task of the ple model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output")
    args, beam_args = parser.parse_known_args(argv)
    if args.min_count < 1:
        parser.error("--min-count must be >= 1")
    if not 0.0 <= args.max_rejected_fraction <= 1.0:
        parser.error("--max-rejected-fraction must be in [0, 1]")
    if args.num_shards < 0:
        parser.error("--num-shards must be >= 0")
    try:
        args.schema = S.Schema(**{f: getattr(args, f) for f in (
            "history_length", "max_queries", "max_query_words", "nip_positives", "nip_negatives",
            "query_clicked_items")})
    except ValueError as error:
        parser.error(str(error))
    return args, with_local_defaults(beam_args)


BEAM_EPILOG = (
    "Unrecognised flags are Beam pipeline options, passed through unchanged "
    "(e.g. --runner=DataflowRunner; README, \"Running on a cluster\").\n"
    "Without --runner the job runs locally with:\n  " + " ".join(LOCAL_DEFAULTS) + "\n"
    "(--runner=DirectRunner instead would first try Beam's Prism runner.)")


def with_local_defaults(beam_args: list[str]) -> list[str]:
    """Beam options with LOCAL_DEFAULTS filled in, unless a --runner was given."""
    given = {a.split("=", 1)[0] for a in beam_args if a.startswith("--")}
    if "--runner" in given:
        return beam_args
    defaults = [d for d in LOCAL_DEFAULTS if d.split("=", 1)[0] not in given]
    if any(a.startswith("--direct_running_mode=") and not a.endswith("multi_processing")
           for a in beam_args):  # one process: a worker count would only draw a warning
        defaults = [d for d in defaults if not d.startswith("--direct_num_workers")]
    return defaults + beam_args


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def _exists(path: str) -> bool:
    """A file or a directory; on an object store a "directory" is any object under the prefix."""
    if FileSystems.exists(path):
        return True
    if _is_local(path):
        return False
    try:
        return bool(FileSystems.match([FileSystems.join(path, "**")], [1])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  (nothing there: some stores raise)
        return False


def move(source: str, destination: str, per_file: bool | None = None) -> None:
    """Moves a file or a directory tree. Locally one rename (atomic on one filesystem); on an
    object store (per_file, the default there) every object is copied and deleted in turn."""
    if not (per_file if per_file is not None else not _is_local(source)):
        FileSystems.rename([source], [destination])
        return
    if FileSystems.exists(source) and not os.path.isdir(source):
        FileSystems.rename([source], [destination])
        return
    files = [m.path for m in FileSystems.match([FileSystems.join(source, "**")])[0].metadata_list]
    targets = [destination + path[len(source):] for path in files]
    if _is_local(destination):  # a local per-file move (tests) needs the directories
        for directory in sorted({os.path.dirname(t) for t in targets}):
            os.makedirs(directory, exist_ok=True)
    FileSystems.rename(files, targets)
    if _is_local(source):
        FileSystems.delete([source])


def remove(path: str) -> None:
    """Deletes a file or a directory tree (on an object store: every object under the prefix)."""
    if _is_local(path) or FileSystems.exists(path):
        FileSystems.delete([path])
    else:
        FileSystems.delete([path.rstrip("/") + "/"])


class StagedOutput:
    """A job's outputs, written into a staging directory and swapped in only on success.

    `names` are the job's outputs in `output`; `stale` are outputs of later stages derived from an
    earlier run there (the augment stage's table, for instance): a published run removes them,
    so nothing reads them as this data's. Without `overwrite`, an earlier run's outputs (of either
    kind) are an InputError before anything runs. The staging directory is `output`/.staging-*;
    `publish()` moves the earlier outputs into `output`/.replaced-*, the new ones into place and
    deletes both; `fail()` keeps the run's outputs in `output`/failed_run/ for inspection and
    leaves the earlier ones as they were; `discard()` deletes the staging directory (a crash).

    Locally each move is one rename, so the swap takes milliseconds and a crash during it leaves
    every file in a named directory. On an object store (gs://) the swap copies object by object
    (not atomic: a reader during the swap may see a mix), and a "directory" exists when an object
    is under its prefix.
    """

    FAILED = "failed_run"

    def __init__(self, output: str, names: Sequence[str], *, overwrite: bool,
                 stale: Sequence[str] = ()):
        self.output, self.names, self.stale = output, tuple(names), tuple(stale)
        earlier = [name for name in (*self.names, *self.stale) if _exists(self.path(name))]
        if earlier and not overwrite:
            raise InputError(f"{output} already holds {earlier}: pass --overwrite to replace "
                             "them (they are replaced only when the new run succeeds)")
        self._run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.staging = self.path(f".staging-{self._run_id}")
        try:
            FileSystems.mkdirs(self.staging)  # creates `output` too
        except OSError as error:
            raise InputError(f"cannot write to {output}: {error}") from None

    def path(self, name: str) -> str:
        return FileSystems.join(self.output, name)

    def staged(self, name: str) -> str:
        return FileSystems.join(self.staging, name)

    def publish(self) -> None:
        replaced = [name for name in (*self.names, *self.stale, self.FAILED)
                    if _exists(self.path(name))]
        trash = self.path(f".replaced-{self._run_id}")
        if replaced:
            FileSystems.mkdirs(trash)
            for name in replaced:
                move(self.path(name), FileSystems.join(trash, name))
        for name in self.names:
            if _exists(self.staged(name)):
                move(self.staged(name), self.path(name))
        for path in (trash, self.staging):
            if _exists(path):
                remove(path)

    def fail(self) -> str:
        """Keeps this run's outputs in `output`/failed_run/ (replacing an older one); its path."""
        failed = self.path(self.FAILED)
        if _exists(failed):
            remove(failed)
        move(self.staging, failed)
        return failed

    def discard(self) -> None:
        if _exists(self.staging):
            remove(self.staging)


def check_input_errors(stats: dict, inputs: dict[str, tuple[str, kuaisar.Header]]) -> list[str]:
    """A compressed input that is cut or corrupt: this run did not read all of it."""
    problems = []
    for name, (path, _) in inputs.items():
        for reason in stats.get(name, {}).get("input_errors", {}):
            what = ("is cut short (the gzip stream ends early)" if reason == "gzip_truncated"
                    else "is corrupt (not a valid gzip stream)")
            problems.append(f"{name}: {path} {what}; {stats[name].get('rows_read', 0):,} rows "
                            "were read before the error")
    return problems


def check_examples(stats: dict) -> list[str]:
    """A build without training examples is no training data."""
    if stats.get("examples", {}).get(S.SPLITS[0], {}).get("count", 0):
        return []
    users = stats.get("users", {})
    return [f"no training examples: {users.get('kept', 0):,} users kept (a user needs search "
            f"and feed history, and 3 feed interactions for a train one); dropped "
            f"{users.get('dropped', {})}"]


def check_rejections(stats: dict, max_fraction: float) -> list[str]:
    problems = []
    for name in kuaisar.LOG_FILES:
        entry = stats.get(name, {})
        read, rejected = entry.get("rows_read", 0), entry.get("rows_rejected", 0)
        if read and rejected / read > max_fraction:
            problems.append(f"{name}: {rejected:,} of {read:,} rows rejected "
                            f"({rejected / read:.2%} > {max_fraction:.2%}); reasons: "
                            f"{entry.get('rejected_by_reason', {})}")
    return problems


def summary(stats: dict) -> str:
    lines = []
    for name in kuaisar.LOG_FILES:
        e = stats.get(name, {})
        lines.append(f"  {name:14s} read {e.get('rows_read', 0):>11,}"
                     f"  used {e.get('rows_used', 0):>11,}"
                     f"  rejected {e.get('rows_rejected', 0):>7,}")
    users = stats.get("users", {})
    lines.append(f"  users kept {users.get('kept', 0):,}; dropped {users.get('dropped', {})}")
    for split in (*S.SPLITS, *([S.SEARCH_TRAIN] if S.SEARCH_TRAIN in stats.get("examples", {})
                               else [])):
        e = stats.get("examples", {}).get(split, {})
        ctr = e.get("ctr")
        lines.append(f"  {split:5s} examples {e.get('count', 0):>10,}  ctr "
                     + (f"{ctr:.4f}" if ctr is not None else "n/a"))
    qi = stats.get("query_items", {})
    lines.append(f"  queries {qi.get('queries', 0):,}, share with a click "
                 f"{qi.get('share_with_click', 0):.3f}")
    return "\n".join(lines)


def augment_outputs() -> tuple[str, ...]:
    """What `python -m qrec_tf.augment --output <data dir>` writes: derived from one build, so
    a new build removes them (imported here, not at module level: Beam workers need no Keras)."""
    from qrec_tf import augment, positives
    return (positives.POSITIVES_DIR, augment.SUMMARY_FILE, augment.CONFIG_FILE,
            augment.WEIGHTS_FILE, augment.CHECKPOINT_DIR)


def run(argv: Sequence[str] | None = None) -> dict:
    """Runs the job; returns stats.json's content. Raises InputError / SystemExit on failure."""
    args, beam_args = parse_args(argv)
    inputs = {name: find_input(args.input, name) for name in kuaisar.LOG_FILES}
    out = StagedOutput(args.output, (*OUTPUT_DIRS, S.STATS_FILE, S.SCHEMA_FILE),
                       overwrite=args.overwrite, stale=augment_outputs())
    try:
        with FileSystems.create(out.staged(S.SCHEMA_FILE)) as f:
            f.write(args.schema.to_json().encode("utf-8"))
        LOG.info("reading %s", ", ".join(path for path, _ in inputs.values()))
        started = time.monotonic()
        options = PipelineOptions(beam_args)
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, inputs, out.staging, args.schema, seed=args.seed,
                           min_count=args.min_count, num_shards=args.num_shards,
                           search_examples=args.search_examples)
        elapsed = time.monotonic() - started
        with FileSystems.open(out.staged(S.STATS_FILE)) as f:
            stats = json.loads(f.read())
    except BaseException:
        out.discard()  # a crashed run's partial outputs; the earlier ones stay as they were
        raise
    stats_rows = sum(stats.get(name, {}).get("rows_read", 0) for name in kuaisar.LOG_FILES)
    LOG.info("done in %.1f s (%s input rows, %.0f rows/s)\n%s", elapsed, f"{stats_rows:,}",
             stats_rows / max(elapsed, 1e-9), summary(stats))
    problems = (check_input_errors(stats, inputs)
                + check_rejections(stats, args.max_rejected_fraction) + check_examples(stats))
    if problems:
        failed = out.fail()
        raise SystemExit(f"build_tfrecords FAILED; this run's outputs are in {failed} for "
                         f"inspection (dead letters: {FileSystems.join(failed, S.DEAD_LETTER_DIR)}"
                         f"), {args.output}'s earlier outputs are unchanged:\n  "
                         + "\n  ".join(problems))
    out.publish()
    LOG.info("outputs in %s", args.output)
    return stats


def configure_logging() -> None:
    """INFO from our jobs, warnings only from Beam and absl."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    try:
        run(argv)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
