"""The smaller transforms of pipelines.build_tfrecords: one item_features row per item
(ResolveItems), merging the query -> items partials, writing the vocabularies and stats.json."""

from __future__ import annotations

import collections
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import kuaisar, row_checks, vocab_lineage
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
