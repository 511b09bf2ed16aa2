"""The smaller transforms of pipelines.build_tfrecords: one item_features row per item
(ResolveItems), merging the query -> items partials, writing the vocabularies and stats.json."""

from __future__ import annotations

import collections
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import kuaisar, row_checks
from pipelines.build_stats import nest_stats
from pipelines.user_examples import QueryItems


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
    def __init__(self, vocab_dir: str):
        self._dir = vocab_dir

    def process(self, element):
        name, rows = element
        rows = sorted((row for row in rows if row is not None), key=_sort_key)
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
