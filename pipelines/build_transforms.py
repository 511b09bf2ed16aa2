"""The smaller transforms of pipelines.build_tfrecords: one item_features row per item
(ResolveItems), merging the query -> items partials, writing the vocabularies and stats.json."""

from __future__ import annotations

import collections
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipelines import kuaisar, row_checks, vocab_lineage
from pipelines.build_stats import nest_stats
from pipelines.user_examples import (
    QueryItems,
    build_user_examples,
    query_items_of,
    sessions_of,
)
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.build_tfrecords")


class ResolveItems(beam.DoFn):
    """(item_id, [its parsed item_features rows]) -> (item_id, the one row used:
    row_checks.CHOSEN_ITEM_ROW), and "stats" counts of duplicate and conflicting rows."""

    STATS = "stats"

    def process(self, element):
        item, rows = element
        chosen, duplicates, conflicting = row_checks.resolve_item_rows(rows)
        name = kuaisar.ITEM_FEATURES
        counts = {f"{name}/items": 1, f"{name}/duplicate_rows": duplicates,
                  f"{name}/rows_dropped/duplicate": duplicates,
                  f"{name}/rows_dropped/conflicting": conflicting,
                  f"{name}/conflicting_items": 1 if conflicting else 0,
                  f"{name}/rows_used": -duplicates - conflicting}
        for key, count in counts.items():
            if count or key.endswith("/items"):
                yield beam.pvalue.TaggedOutput(self.STATS, (key, count))
        yield item, chosen


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
    """(name, [(value, count) or None]) -> vocab/<name>.txt: most frequent first, values below
    `min_count` left out (None entries only make sure the file is written); with `previous_dir`
    (--previous-data) its values first, in its order, then the new ones
    (pipelines.vocab_lineage.merge_rows)."""

    def __init__(self, vocab_dir: str, min_count: int = 1, previous_dir: str | None = None,
                 decay: float = vocab_lineage.DEFAULT_DECAY):
        self._dir = vocab_dir
        self._min_count = min_count
        self._previous_dir = previous_dir
        self._decay = decay

    def process(self, element):
        name, rows = element
        previous = []
        if self._previous_dir is not None:
            previous = vocab_lineage.read_rows(vocab_lineage.vocab_file(self._previous_dir, name))
        rows, appended = vocab_lineage.merge_rows(
            previous, (row for row in rows if row is not None), self._decay, self._min_count,
            _sort_key)
        vocab_lineage.write_rows(FileSystems.join(self._dir, name + ".txt"), rows)
        yield f"vocab/{name}", len(rows)
        if self._previous_dir is not None:
            yield f"vocab_appended/{name}", appended


class WriteJson(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, stats: dict):
        with FileSystems.create(self._path) as f:
            f.write(json.dumps(nest_stats(stats), indent=2, sort_keys=True).encode("utf-8"))
        yield self._path


class BuildUserExamples(beam.DoFn):
    """(user_id, (rec, search, user features)) -> serialized examples per split, plus
    vocabulary counts, query->items partials and statistics."""

    VOCAB, QUERY_ITEMS, STATS = "vocab", "query_items", "stats"
    MISSING_ITEMS = "missing_items"   # feed items of kept users without an item_features row

    def __init__(self, schema: S.Schema, seed: int, search_examples: bool = False,
                 keep_duplicates: bool = False, time_split: tuple[int, int] | None = None):
        self._schema = schema
        self._seed = seed
        self._search_examples = search_examples
        self._keep_duplicates = keep_duplicates
        self._time_split = time_split
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
        # Exact duplicate rows (replayed log lines) are counted; feature rows always, and feed and
        # search rows unless --keep-duplicate-rows, are dropped: rows_used counts rows used, so
        # rows_read == rows_used + rows_rejected + the rows_dropped reasons.
        rec = self._dedupe(kuaisar.REC_INTER, rec, self._keep_duplicates)
        search = self._dedupe(kuaisar.SRC_INTER, search, self._keep_duplicates)
        features = self._dedupe(kuaisar.USER_FEATURES, features, False)
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

        # Leave-one-out holds out two different interactions (with --keep-duplicate-rows, or a
        # row logged both clicked and not, one interaction could be both valid and test).
        rec, repeats = row_checks.distinct_held_out(sorted(rec))
        self._drop(kuaisar.REC_INTER, "repeat_of_held_out", repeats)
        missing = {row[1] for row in rec if row[1] not in items}
        stats[f"{kuaisar.ITEM_FEATURES}/feed_rows_of_kept_users"] += len(rec)
        stats[f"{kuaisar.ITEM_FEATURES}/feed_rows_without_features"] += sum(
            row[1] in missing for row in rec)
        for item in missing:
            yield beam.pvalue.TaggedOutput(self.MISSING_ITEMS, item)
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
                                                 self._schema, self._seed, self._search_examples,
                                                 self._time_split):
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

    def _drop(self, file: str, reason: str, rows: int) -> None:
        if rows:
            self._stats[f"{file}/rows_dropped/{reason}"] += rows
            self._stats[f"{file}/rows_used"] -= rows   # read_logs counted every parsed row

    def _dedupe(self, file: str, rows: list, keep: bool) -> list:
        rows, duplicates = row_checks.dedupe(rows, keep)
        if duplicates:
            self._stats[f"{file}/duplicate_rows"] += duplicates
            self._drop(file, "duplicate", 0 if keep else duplicates)
        return rows

    def finish_bundle(self):
        for tag, counts in ((self.VOCAB, self._vocab), (self.STATS, self._stats)):
            for key, count in counts.items():
                yield beam.pvalue.TaggedOutput(tag, GlobalWindows.windowed_value((key, count)))


# --- the pipeline ----------------------------------------------------------------------------
