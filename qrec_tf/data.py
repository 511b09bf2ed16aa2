"""TFRecord shards written by `pipelines.build_tfrecords` -> batched, prefetched tf.data datasets.

Keys, dtypes and shapes come from `qrec_tf.schema` with the sequence lengths the data was written
with (`<data>/schema.json`). Each element is a dict {feature name: tensor [batch, *shape]}, or a
(features, label) pair with `supervised=True`. `make_multitask_dataset` mixes the feed train
examples with the search examples for multi-task training; `query_items` reads the query -> items
table. With `shard=(index, count)` both read one worker's disjoint part of the data (`Sharding`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from qrec_tf import schema as S

LOG = logging.getLogger(__name__)


def shard_files(path: str, split: str) -> list[str]:
    """The sorted TFRecord shards of one split (or of search_train/); a clear error when there
    are none."""
    if split not in S.EXAMPLE_SPLITS:
        raise ValueError(f"split must be one of {S.EXAMPLE_SPLITS}, got {split!r}")
    pattern = os.path.join(path, split, S.EXAMPLE_FILE_PATTERN)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        hint = ("is {path!r} the --output of `python -m pipelines.build_tfrecords`?"
                if split != S.SEARCH_TRAIN or not tf.io.gfile.exists(
                    os.path.join(path, S.SCHEMA_FILE))
                else "the search examples are written only by "
                     "`python -m pipelines.build_tfrecords --search-examples`")
        raise FileNotFoundError(f"no TFRecord shards match {pattern}: {hint.format(path=path)}")
    return files


def split_size(path: str, split: str) -> int | None:
    """Examples in a split as the Beam job counted them (stats.json), or None if unknown. (A
    loaded `qrec_tf.data_dir.DataDirectory` reads stats.json once for every split.)"""
    stats_path = os.path.join(path, S.STATS_FILE)
    if not tf.io.gfile.exists(stats_path):
        return None
    with tf.io.gfile.GFile(stats_path) as f:
        count = json.load(f).get("examples", {}).get(split, {}).get("count")
    return int(count) if count is not None else None


def _source(source, schema: S.Schema | None) -> tuple[str, S.Schema, Callable]:
    """(path, schema, split -> examples) of a path, or of a loaded data directory
    (`qrec_tf.data_dir.DataDirectory`, taken by its attributes: that module builds on this one),
    whose schema.json and stats.json are then not read again."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path, schema or S.Schema.load(path), functools.partial(split_size, path)
    return source.path, schema or source.schema, source.split_size


def parse_examples(serialized: tf.Tensor, schema: S.Schema,
                   names: Iterable[str] | None = None) -> dict[str, tf.Tensor]:
    """Serialized tf.Example [batch] -> {name: tensor [batch, *shape]}."""
    return tf.io.parse_example(serialized, schema.parse_spec(names))


def _names(schema: S.Schema, features: Iterable[str] | None, supervised: bool) -> list[str]:
    names = list(features) if features is not None else list(schema.feature_names)
    if supervised and S.LABEL not in names:
        names.append(S.LABEL)
    unknown = [n for n in names if n not in schema.feature_names]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; the schema has {schema.feature_names}")
    return names


def _check_sizes(batch_size: int, num_epochs: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")


@dataclasses.dataclass(frozen=True)
class Sharding:
    """Which part of a split one of `count` input pipelines (one per worker) reads: whole files
    when every pipeline gets at least one, else every count-th example of all files."""

    index: int
    count: int
    by_files: bool

    @classmethod
    def choose(cls, num_files: int, shard: tuple[int, int], split: str) -> "Sharding":
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        if num_files >= count:
            return cls(index, count, by_files=True)
        if index == 0:
            LOG.warning("%s has %d file(s) for %d input pipelines: sharding by example (every "
                        "worker reads every file); `pipelines.build_tfrecords --num-shards %d` "
                        "or more reads less", split, num_files, count, count)
        return cls(index, count, by_files=False)


class CorruptData(ValueError):
    """A TFRecord shard that is cut short or corrupt (a one-line message naming the file)."""


def corrupt_shards(path: str, splits: Iterable[str]) -> list[tuple[str, str]]:
    """(file, error) for every shard of `splits` under `path` that cannot be read to its end."""
    bad = []
    for split in splits:
        if not os.path.isdir(os.path.join(path, split)):
            continue
        for file in shard_files(path, split):
            try:
                for _ in tf.data.TFRecordDataset(file, compression_type=S.COMPRESSION):
                    pass
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
                bad.append((file, error.message.splitlines()[0] if error.message else
                            type(error).__name__))
    return bad


def corrupt_data_error(path: str, splits: Iterable[str], error: tf.errors.OpError
                       ) -> CorruptData:
    """The one-line error for a DataLossError met while reading `splits` of `path`: it names the
    damaged files (read again one by one to find them) and says to rebuild."""
    bad = corrupt_shards(path, splits)
    what = ("; ".join(f"{file} ({message})" for file, message in bad) if bad else
            f"a shard under {path} ({error.message.splitlines()[0] if error.message else ''})")
    return CorruptData(f"truncated or corrupt TFRecord data: {what}; rebuild {path} with "
                       "`python -m pipelines.build_tfrecords --overwrite`")


def _records(path: str, split: str, shuffle: bool, shuffle_buffer: int,
             seed: int | None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Serialized examples of one split (or of its `shard`: (index, count)), shuffled (shards
    and examples) if asked."""
    files = shard_files(path, split)
    sharding = None if shard is None else Sharding.choose(len(files), shard, split)
    if sharding is not None and sharding.by_files:
        files = files[sharding.index::sharding.count]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    # Sharding by example needs the same record order in every pipeline: files in their order.
    if shuffle and (sharding is None or sharding.by_files):
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=S.COMPRESSION),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not shuffle or sharding is not None)
    if sharding is not None and not sharding.by_files:
        dataset = dataset.shard(sharding.count, sharding.index)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset


def _batch_and_parse(records: tf.data.Dataset, schema: S.Schema, names: list[str],
                     batch_size: int, drop_remainder: bool, examples: int | None,
                     supervised: bool, deterministic: bool) -> tf.data.Dataset:
    """Serialized examples -> batches of parsed features; `examples`: how many `records` yields
    in all (None: unknown, e.g. repeated forever)."""
    # Parsing whole batches is several times faster than parsing examples one by one.
    dataset = records.batch(batch_size, drop_remainder=drop_remainder)
    if examples is not None:
        # A known length gives Keras a real progress bar (and no "ran out of data" warning).
        rounding = math.floor if drop_remainder else math.ceil
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            rounding(examples / batch_size)))
    dataset = dataset.map(lambda s: parse_examples(s, schema, names),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if supervised:
        dataset = dataset.map(lambda batch: ({k: v for k, v in batch.items() if k != S.LABEL},
                                             batch[S.LABEL]))
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_dataset(
    path,
    split: str,
    batch_size: int,
    *,
    shuffle: bool | None = None,
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
    features: Iterable[str] | None = None,
    supervised: bool = False,
    schema: S.Schema | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """A batched, prefetched dataset of one split.

    Args:
      path: the pipeline's output directory (holds schema.json and train/ valid/ test/), or
        that directory loaded (`qrec_tf.data_dir.DataDirectory`: its schema and split sizes).
      split: "train", "valid", "test" (or "search_train", the search examples alone).
      batch_size: examples per batch; the last batch is smaller unless `drop_remainder`.
      shuffle: shuffle shards and examples; defaults to True for "train" only. The pipeline
        writes a user's examples next to each other, so training needs the shuffle buffer.
      shuffle_buffer: examples held by the shuffle buffer.
      seed: makes the shuffle order reproducible.
      num_epochs: passes over the data; None repeats forever.
      drop_remainder: drop a last, smaller batch (static batch dimension, e.g. for TPUs).
      features: the feature names to parse (default: all in the schema).
      supervised: yield (features without the label, label) pairs for `keras.Model.fit`.
      schema: defaults to the data's (`Schema.load(path)`).
      shard: (index, count): read only the index-th of `count` disjoint parts of the split (one
        per worker; `Sharding`): by files when the split has at least `count` of them, else by
        example. The part's length is then unknown to the dataset.

    Returns:
      A dataset of {name: tensor [batch, *shape]} (or (features, label [batch]) pairs).
    """
    _check_sizes(batch_size, num_epochs)
    path, schema, sizes = _source(path, schema)
    names = _names(schema, features, supervised)
    shuffle = split == "train" if shuffle is None else shuffle
    records = _records(path, split, shuffle, shuffle_buffer, seed, shard)
    if num_epochs != 1:
        records = records.repeat(num_epochs)
    size = sizes(split) if num_epochs is not None and shard is None else None
    return _batch_and_parse(records, schema, names, batch_size, drop_remainder,
                            None if size is None else size * num_epochs, supervised,
                            deterministic=seed is not None or not shuffle)


def make_multitask_dataset(
    path,
    batch_size: int,
    *,
    splits: Sequence[str] = ("train", S.SEARCH_TRAIN),
    shuffle_buffer: int = 10_000,
    seed: int | None = None,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
    features: Iterable[str] | None = None,
    supervised: bool = False,
    schema: S.Schema | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Training examples of several splits, shuffled together: by default the feed train
    examples and the search examples (`build_tfrecords --search-examples`) of a multi-task model.

    Each batch draws from every split at random, in proportion to the splits' sizes
    (stats.json), so an epoch is one pass over each and every batch holds both tasks; the
    `domain` feature tells an example's task. Arguments as in `make_dataset` (always shuffled).
    """
    _check_sizes(batch_size, num_epochs)
    if len(splits) < 2 or len(set(splits)) != len(splits):
        raise ValueError(f"splits must name two or more distinct splits, got {list(splits)}")
    path, schema, split_sizes = _source(path, schema)
    names = _names(schema, features, supervised)
    sources = []
    for i, split in enumerate(splits):
        records = _records(path, split, True, shuffle_buffer, None if seed is None else seed + i,
                           shard)
        sources.append(records.repeat(num_epochs) if num_epochs != 1 else records)
    sizes = [split_sizes(split) for split in splits]
    if None in sizes:
        LOG.warning("stats.json does not count %s: mixing the splits in equal shares",
                    [s for s, n in zip(splits, sizes) if n is None])
        weights, total = [1.0 / len(splits)] * len(splits), None
    else:
        weights = [n / max(sum(sizes), 1) for n in sizes]
        total = None if num_epochs is None or shard is not None else sum(sizes) * num_epochs
    records = tf.data.Dataset.sample_from_datasets(sources, weights=weights, seed=seed,
                                                   stop_on_empty_dataset=False)
    return _batch_and_parse(records, schema, names, batch_size, drop_remainder, total,
                            supervised, deterministic=seed is not None)


def query_item_batches(path: str, batch_size: int = 4096
                       ) -> Iterator[dict[str, tf.Tensor | tf.SparseTensor]]:
    """The query -> items table (`<path>/query_items/`), parsed with S.QUERY_ITEMS_SPEC in
    batches of up to `batch_size` rows, shards in file-name order: per batch the query keys
    (string [B]), sessions (int64 [B]) and the variable-length features (tf.SparseTensor
    [B, None]). The one reader of that table (`query_items`, `positives.log_positives` and the
    augment stage use it); a missing table raises FileNotFoundError at the call."""
    pattern = os.path.join(path, S.QUERY_ITEMS_DIR, S.EXAMPLE_FILE_PATTERN)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no query table at {pattern}: is {path!r} the --output of "
                                "`python -m pipelines.build_tfrecords`?")
    records = tf.data.TFRecordDataset(files, compression_type=S.COMPRESSION).batch(batch_size)
    return iter(records.map(lambda s: tf.io.parse_example(s, S.QUERY_ITEMS_SPEC)))


def query_items(path: str) -> Iterator[dict]:
    """The rows of the query -> items table (`<path>/query_items/`), each as {QI_* name: value}:
    the query key as str, sessions as int, the variable-length features as lists of ints."""
    for batch in query_item_batches(path):
        columns = {name: (tf.RaggedTensor.from_sparse(value).to_list()
                          if isinstance(value, tf.SparseTensor) else value.numpy().tolist())
                   for name, value in batch.items()}
        for i, key in enumerate(columns[S.QI_QUERY_KEY]):
            yield {**{name: values[i] for name, values in columns.items()},
                   S.QI_QUERY_KEY: key.decode("utf-8")}


def item_categories(path: str, item_values: Sequence) -> np.ndarray:
    """int64 [len(item_values) + 2, 3]: the raw (category, sub-category, author) ids of each item
    row of the item vocabulary (row 0 padding, 1 OOV, then `item_values` in order), from the Beam
    job's `<path>/item_categories.tsv` (its item_features rows); PAD_ID for an item without a row.

    Lets a model place an item it knows only by id (a query's clicked item) in the categories
    its targets are represented with, without reading a split."""
    return item_categories_table(read_item_categories(path), item_values)


def read_item_categories(path: str) -> dict[int, tuple[int, int, int]]:
    """item id -> (category, sub-category, author) raw ids of `<path>/item_categories.tsv`."""
    file = os.path.join(path, S.ITEM_CATEGORIES_FILE)
    if not tf.io.gfile.exists(file):
        raise FileNotFoundError(f"{file} not found: rebuild {path!r} with this version of "
                                "`python -m pipelines.build_tfrecords` (model.query_item_context "
                                "and model.search_match read it)")
    rows = {}
    with tf.io.gfile.GFile(file) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise S.SchemaMismatch(
                    f"{file} line {number} has {len(fields)} columns, not 4 (item, category, "
                    "sub-category, author): the data was written by an older version of "
                    "pipelines.build_tfrecords; run it again with this version")
            item, category, subcategory, author = (int(x) for x in fields)
            rows[item] = (category, subcategory, author)
    return rows


def item_categories_table(rows: dict[int, tuple[int, int, int]], item_values: Sequence
                          ) -> np.ndarray:
    """`item_categories`' table from `read_item_categories`' rows (a later row of an item wins,
    as it did when the file was written into the table line by line)."""
    table = np.full((len(item_values) + 2, 3), S.PAD_ID, np.int64)
    for row, value in enumerate(item_values, start=2):
        found = rows.get(int(value))
        if found is not None:
            table[row] = found
    return table
