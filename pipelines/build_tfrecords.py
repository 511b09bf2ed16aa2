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

Accounting: for every input file rows_read == rows_used + rows_rejected + sum(rows_dropped), where
rows_read counts records (blank lines apart: blank_lines), a rejected row is a record that cannot
be parsed (it is in dead_letter/ with its reason) and a dropped one parses but is not used:
an exact duplicate (`duplicate`, see --keep-duplicate-rows), an item_features row that differs
from the one used for its item (`conflicting`, row_checks.CHOSEN_ITEM_ROW), or a second row of a
held-out interaction (`repeat_of_held_out`: valid and test are two different interactions).
Rows of users dropped for lacking a search or a feed history are parsed and used for the search
tables; they are reported in stats.json as `rows_of_dropped_users`, never silently. A .csv.gz
that is cut short or corrupt is counted as `<file>/input_errors/<reason>` (and dead-lettered with
the error).

Outputs are written into a staging directory inside --output and swapped in only when the job
succeeded (beam_support.StagedOutput). The job fails (exit 1), leaving --output's earlier outputs
as they were and this run's in --output/failed_run/ for inspection, when a compressed input is cut
or corrupt, when a file's rejected share exceeds --max-rejected-fraction, when more items than
--max-conflicting-fraction have conflicting item_features rows, when more feed rows than
--max-missing-item-features have an item without one, or when there is no training example. It
fails before anything runs (exit 2) when a flag is neither its own nor a Beam option, or when
timestamps are in seconds (row_checks.check_timestamp_units).

With --previous-data DIR the vocabularies extend DIR's: its values keep their indices, new ones
are appended, counts are decayed sums; schema.json's "lineage" names the build it extends
(pipelines.vocab_lineage).

Vocabulary counts: users = feed interactions of kept users; items = feed interactions of kept users
plus search impressions; queries = search sessions; words = word occurrences in search sessions;
categories/subcategories/authors = items (one item_features row each); user-feature vocabularies =
kept users. Every vocabulary file is written, empty or not.

Runs locally on pipelines.beam_support.LocalRunner (the DirectRunner's FnApiRunner without its
Prism attempt; one process: Beam's multi-process mode loses elements, README "Running on a
cluster") unless --runner is given; all other Beam options (--runner=DataflowRunner --project ... /
PortableRunner / FlinkRunner / SparkRunner) pass through unchanged (README, "Running on a
cluster"). With --num-shards N the example shards are byte-identical across runs and runners.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import kuaisar, row_checks, vocab_lineage
from pipelines.beam_support import (
    BEAM_EPILOG,
    InputError,
    StagedOutput,
    WriteSortedShards,
    configure_logging,
    with_local_defaults,
)
from pipelines.build_stats import (
    build_warnings,
    check_examples,
    check_input_errors,
    check_item_features,
    check_rejections,
    check_written,
    summary,
)
from pipelines.build_transforms import (
    BuildUserExamples,
    MergeQueryItems,
    ResolveItems,
    WriteJson,
    WriteVocab,
)
from pipelines.log_reading import (
    find_input,
    group_by_user,
    read_logs,
    sample_lines,
    sum_then_flatten,
)
from qrec_tf import layout
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.build_tfrecords")
PROG = "python -m pipelines.build_tfrecords"
OUTPUT_DIRS = (*S.EXAMPLE_SPLITS, S.VOCAB_DIR, S.QUERY_ITEMS_DIR, S.DEAD_LETTER_DIR)


def build_pipeline(pipeline: beam.Pipeline, inputs: dict[str, tuple[str, kuaisar.Header]],
                   output: str, schema: S.Schema, *, seed: int, min_count: int, num_shards: int,
                   search_examples: bool = False, keep_duplicates: bool = False,
                   previous_data: str | None = None,
                   vocab_decay: float = vocab_lineage.DEFAULT_DECAY,
                   time_split: tuple[int, int] | None = None) -> None:
    parsed, stats = read_logs(pipeline, inputs, output)
    # One row per item (ResolveItems), for the examples, item_categories.tsv and the vocabularies.
    resolved = (parsed[kuaisar.ITEM_FEATURES]
                | "Item rows per item" >> beam.CombinePerKey(beam.combiners.ToListCombineFn())
                | "Resolve item rows" >> beam.ParDo(ResolveItems()).with_outputs(
                    ResolveItems.STATS, main="items"))
    items = resolved.items
    stats.append(resolved[ResolveItems.STATS])
    by_user = group_by_user(parsed, (kuaisar.REC_INTER, kuaisar.SRC_INTER, kuaisar.USER_FEATURES))
    built = by_user | "Build examples" >> beam.ParDo(
        BuildUserExamples(schema, seed, search_examples, keep_duplicates, time_split),
        items=beam.pvalue.AsDict(items)).with_outputs(
            BuildUserExamples.VOCAB, BuildUserExamples.QUERY_ITEMS, BuildUserExamples.STATS,
            BuildUserExamples.MISSING_ITEMS, *S.EXAMPLE_SPLITS)
    stats.append(built[BuildUserExamples.STATS])
    stats.append(built[BuildUserExamples.MISSING_ITEMS]
                 | "Distinct missing items" >> beam.Distinct()
                 | "Key missing items" >> beam.Map(
                     lambda _: (f"{kuaisar.ITEM_FEATURES}/feed_items_without_features", 1)))

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

    _ = (items | "Item categories" >> beam.Map(
            lambda kv: f"{kv[0]}\t{kv[1][1]}\t{kv[1][2]}\t{kv[1][0]}")
         | "Write item categories" >> beam.io.WriteToText(
             FileSystems.join(output, S.ITEM_CATEGORIES_FILE), shard_name_template=""))
    item_vocab_counts = items | "Item feature vocab" >> beam.FlatMap(lambda kv: [
        ((vocab, str(value)), 1)
        for vocab, value in zip((S.VOCAB_AUTHORS, S.VOCAB_CATEGORIES, S.VOCAB_SUBCATEGORIES), kv[1])
        if value != kuaisar.MISSING])
    # One None per vocabulary, so that every vocabulary file is written, empty or not (the
    # trainer reads them all). --min-count applies in WriteVocab (to new values only).
    every_vocab = (pipeline | "Vocab names" >> beam.Create(S.VOCABULARIES)
                   | "Empty vocab" >> beam.Map(lambda name: (name, None)))
    vocab_sizes = ((sum_then_flatten("vocab counts", [built[BuildUserExamples.VOCAB],
                                                      item_vocab_counts])
                    | "Sum vocab counts" >> beam.CombinePerKey(sum)
                    | "Key by vocab" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1]))),
                    every_vocab) | "With every vocab" >> beam.Flatten()
                   | "Group vocab" >> beam.GroupByKey()
                   | "Write vocab" >> beam.ParDo(
                       WriteVocab(FileSystems.join(output, S.VOCAB_DIR), min_count,
                                  previous_data, vocab_decay)))
    stats.append(vocab_sizes)

    _ = (sum_then_flatten("stats", stats)
         | "Sum stats" >> beam.CombinePerKey(sum)
         | "Stats dict" >> beam.combiners.ToDict()
         | "Write stats" >> beam.ParDo(WriteJson(FileSystems.join(output, S.STATS_FILE))))


# --- command line ----------------------------------------------------------------------------
DAY_MS = 24 * 3600 * 1000
BEIJING = datetime.timezone(datetime.timedelta(hours=8))   # KuaiSAR's days (kuaisar.beijing_time)

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
    parser.add_argument("--max-conflicting-fraction", type=float, default=0.01,
                        help="fail when more than this share of the items has item_features "
                             "rows that differ (default 0.01; the rule that picks one: README)")
    parser.add_argument("--max-missing-item-features", type=float, default=0.5,
                        help="fail when more than this share of the kept users' feed rows has "
                             "an item without an item_features row (default 0.5; any: a "
                             "warning)")
    parser.add_argument("--keep-duplicate-rows", action="store_true",
                        help="use exact duplicate feed and search rows as often as they occur "
                             "(default: counted in stats.json and dropped)")
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
    parser.add_argument("--previous-data", default=None, metavar="DIR",
                        help="the output of an earlier build to extend: every id, query and word "
                             "in its vocabularies keeps its index, new ones are appended, counts "
                             "are decayed sums (pipelines.vocab_lineage); schema.json records "
                             "the build it extends")
    parser.add_argument("--vocab-decay", type=float, default=vocab_lineage.DEFAULT_DECAY,
                        help="with --previous-data: count = round(decay * previous count) + "
                             "this build's count (default %(default)s)")
    parser.add_argument("--split-by", choices=("leave_one_out", "time"), default="leave_one_out",
                        help="leave_one_out (the paper's: each user's last feed interaction is "
                             "test, the one before valid) or time (impressions of the days up to "
                             "--train-until train, the next --valid-days valid, later ones test)")
    parser.add_argument("--train-until", metavar="YYYY-MM-DD", default=None,
                        help="with --split-by time: the last training day (Beijing time, "
                             "KuaiSAR's; synthetic day 1 is 2023-05-22)")
    parser.add_argument("--train-from", metavar="YYYY-MM-DD", default=None,
                        help="with --split-by time: the first training day; earlier impressions "
                             "are only history of the later examples (a window of days)")
    parser.add_argument("--valid-days", type=int, default=1,
                        help="with --split-by time: days after --train-until that are valid "
                             "(default 1); the days after them are test")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output")
    args, beam_args = parser.parse_known_args(argv)
    if args.min_count < 1:
        parser.error("--min-count must be >= 1")
    for flag in ("max_rejected_fraction", "max_conflicting_fraction",
                 "max_missing_item_features", "vocab_decay"):
        if not 0.0 <= getattr(args, flag) <= 1.0:   # also NaN
            parser.error(f"--{flag.replace('_', '-')} must be in [0, 1]")
    args.time_split = None
    if args.split_by == "time":
        if args.train_until is None or args.valid_days < 1:
            parser.error("--split-by time needs --train-until YYYY-MM-DD and --valid-days >= 1")
        try:
            day = datetime.date.fromisoformat(args.train_until)
        except ValueError:
            parser.error(f"--train-until {args.train_until!r} is not a date YYYY-MM-DD")
        valid_from = int(datetime.datetime(day.year, day.month, day.day, tzinfo=BEIJING
                                           ).timestamp() * 1000) + DAY_MS
        args.time_split = (valid_from, valid_from + args.valid_days * DAY_MS)
        if args.train_from is not None:   # a third value: user_examples.build_user_examples
            try:
                first = datetime.date.fromisoformat(args.train_from)
            except ValueError:
                parser.error(f"--train-from {args.train_from!r} is not a date YYYY-MM-DD")
            if first > day:
                parser.error("--train-from must not be after --train-until")
            args.time_split += (int(datetime.datetime(first.year, first.month, first.day,
                                                      tzinfo=BEIJING).timestamp() * 1000),)
    elif args.train_until is not None or args.train_from is not None:
        parser.error("--train-until and --train-from need --split-by time")
    if args.num_shards < 0:
        parser.error("--num-shards must be >= 0")
    try:
        args.schema = S.Schema(**{f: getattr(args, f) for f in (
            "history_length", "max_queries", "max_query_words", "nip_positives", "nip_negatives",
            "query_clicked_items")})
    except ValueError as error:
        parser.error(str(error))
    return args, with_local_defaults(beam_args)


def run(argv: Sequence[str] | None = None) -> dict:
    """Runs the job; returns stats.json's content. Raises InputError / SystemExit on failure."""
    args, beam_args = parse_args(argv)
    inputs = {name: find_input(args.input, name) for name in kuaisar.LOG_FILES}
    row_checks.check_timestamp_units({
        name: (header, sample_lines(path, row_checks.SAMPLE_ROWS))
        for name, (path, header) in inputs.items() if name in (kuaisar.REC_INTER,
                                                               kuaisar.SRC_INTER)})
    previous, previous_lineage = (vocab_lineage.load_previous(args.previous_data, args.schema)
                                  if args.previous_data else (None, None))
    out = StagedOutput(args.output, (*OUTPUT_DIRS, S.STATS_FILE, S.SCHEMA_FILE,
                                     S.ITEM_CATEGORIES_FILE),
                       overwrite=args.overwrite,
                       # derived from the previous build: a new build removes them
                       stale=layout.AUGMENT_OUTPUTS)
    try:
        with FileSystems.create(out.staged(S.SCHEMA_FILE)) as f:
            f.write(args.schema.to_json().encode("utf-8"))
        LOG.info("reading %s", ", ".join(path for path, _ in inputs.values()))
        started = time.monotonic()
        options = PipelineOptions(beam_args)
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, inputs, out.staging, args.schema, seed=args.seed,
                           min_count=args.min_count, num_shards=args.num_shards,
                           search_examples=args.search_examples,
                           keep_duplicates=args.keep_duplicate_rows,
                           previous_data=args.previous_data, vocab_decay=args.vocab_decay,
                           time_split=args.time_split)
        elapsed = time.monotonic() - started
        lineage = vocab_lineage.finish_vocabularies(out.staging, previous, args.vocab_decay,
                                                    previous_lineage, args.previous_data)
        with FileSystems.create(out.staged(S.SCHEMA_FILE)) as f:
            f.write(args.schema.to_json(lineage).encode("utf-8"))
        with FileSystems.open(out.staged(S.STATS_FILE)) as f:
            stats = json.loads(f.read())
    except BaseException:
        out.discard()  # a crashed run's partial outputs; the earlier ones stay as they were
        raise
    stats_rows = sum(stats.get(name, {}).get("rows_read", 0) for name in kuaisar.LOG_FILES)
    LOG.info("done in %.1f s (%s input rows, %.0f rows/s)\n%s", elapsed, f"{stats_rows:,}",
             stats_rows / max(elapsed, 1e-9), summary(stats))
    problems = (check_input_errors(stats, inputs)
                + check_rejections(stats, args.max_rejected_fraction) + check_examples(stats)
                + check_item_features(stats, args.max_conflicting_fraction,
                                      args.max_missing_item_features)
                + check_written(stats, out.staging, (*S.SPLITS, *([S.SEARCH_TRAIN]
                                                                 if args.search_examples else []))))
    for warning in build_warnings(stats):
        LOG.warning("%s", warning)
    if problems:
        failed = out.fail()
        raise SystemExit(f"build_tfrecords FAILED; this run's outputs are in {failed} for "
                         f"inspection (dead letters: {FileSystems.join(failed, S.DEAD_LETTER_DIR)}"
                         f"), {args.output}'s earlier outputs are unchanged:\n  "
                         + "\n  ".join(problems))
    out.publish()
    LOG.info("outputs in %s", args.output)
    return stats


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
