"""TFRecord shards written by `pipelines.build_tfrecords` -> batched, prefetched tf.data datasets.

Keys, dtypes and shapes come from `qrec_tf.schema` with the sequence lengths the data was written
with (`<data>/schema.json`). Each element is a dict {feature name: tensor [batch, *shape]}, or a
(features, label) pair with `supervised=True`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable

import tensorflow as tf

from qrec_tf import schema as S


def shard_files(path: str, split: str) -> list[str]:
    """The sorted TFRecord shards of one split; a clear error when there are none."""
    if split not in S.SPLITS:
        raise ValueError(f"split must be one of {S.SPLITS}, got {split!r}")
    pattern = os.path.join(path, split, S.EXAMPLE_FILE_PATTERN)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {pattern}: is {path!r} the --output of "
            "`python -m pipelines.build_tfrecords`?")
    return files


def split_size(path: str, split: str) -> int | None:
    """Examples in a split as the Beam job counted them (stats.json), or None if unknown."""
    stats_path = os.path.join(path, S.STATS_FILE)
    if not tf.io.gfile.exists(stats_path):
        return None
    with tf.io.gfile.GFile(stats_path) as f:
        count = json.load(f).get("examples", {}).get(split, {}).get("count")
    return int(count) if count is not None else None


def parse_examples(serialized: tf.Tensor, schema: S.Schema,
                   names: Iterable[str] | None = None) -> dict[str, tf.Tensor]:
    """Serialized tf.Example [batch] -> {name: tensor [batch, *shape]}."""
    return tf.io.parse_example(serialized, schema.parse_spec(names))


def make_dataset(
    path: str,
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
) -> tf.data.Dataset:
    """A batched, prefetched dataset of one split.

    Args:
      path: the pipeline's output directory (holds schema.json and train/ valid/ test/).
      split: "train", "valid" or "test".
      batch_size: examples per batch; the last batch is smaller unless `drop_remainder`.
      shuffle: shuffle shards and examples; defaults to True for "train" only. The pipeline
        writes a user's examples next to each other, so training needs the shuffle buffer.
      shuffle_buffer: examples held by the shuffle buffer.
      seed: makes the shuffle order reproducible.
      num_epochs: passes over the data; None repeats forever.
      drop_remainder: drop a last, smaller batch (static batch dimension, e.g. for TPUs).
      features: the feature names to parse (default: all in the schema).
      supervised: yield (features without the label, label) pairs for `keras.Model.fit`.
      schema: defaults to `Schema.load(path)`.

    Returns:
      A dataset of {name: tensor [batch, *shape]} (or (features, label [batch]) pairs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    schema = schema or S.Schema.load(path)
    names = list(features) if features is not None else list(schema.feature_names)
    if supervised and S.LABEL not in names:
        names.append(S.LABEL)
    unknown = [n for n in names if n not in schema.feature_names]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; the schema has {schema.feature_names}")
    shuffle = split == "train" if shuffle is None else shuffle
    files = shard_files(path, split)

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=S.COMPRESSION),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not shuffle)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    # Parsing whole batches is several times faster than parsing examples one by one.
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    examples = split_size(path, split) if num_epochs is not None else None
    if examples is not None:
        # A known length gives Keras a real progress bar (and no "ran out of data" warning).
        rounding = math.floor if drop_remainder else math.ceil
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            rounding(examples / batch_size) * num_epochs))
    dataset = dataset.map(lambda s: parse_examples(s, schema, names),
                          num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=seed is not None or not shuffle)
    if supervised:
        dataset = dataset.map(lambda batch: ({k: v for k, v in batch.items() if k != S.LABEL},
                                             batch[S.LABEL]))
    return dataset.prefetch(tf.data.AUTOTUNE)
