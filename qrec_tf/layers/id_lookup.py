"""Raw ids -> embedding indices inside the graph, from the Beam job's vocabularies.

Training and serving use the same lookup, so there is no skew, and an id never seen in training
maps to an OOV row instead of failing. Indices: 0 = padding (raw -1 / ""), 1 = OOV, 2 .. V + 1 =
the V vocabulary values in file order (most frequent first; with `build_tfrecords
--previous-data`, earlier builds' values first, so that an index never moves).

With B hashed OOV buckets (`model.oov_buckets`), an id outside the vocabulary gets row
V + 2 + fingerprint(id) mod B instead of 1 (`bucketed`): two unseen ids can have different rows,
the same id always has the same one (farmhash of its decimal text, inside the graph, the same in
training and serving). The buckets follow the vocabulary so that every table indexed by value
(2 + line) keeps its layout; `unbucketed` maps bucket rows back to 1 for those tables.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from qrec_tf import schema as S

PAD_INDEX, OOV_INDEX = 0, 1


def make_lookup(values: list, dtype: str, name: str) -> keras.layers.Layer:
    """IntegerLookup / StringLookup with padding -> 0 and one OOV index -> 1.

    An empty vocabulary still works (every id is OOV): the lookup layers refuse an empty list, so
    it gets a placeholder that no real id can equal.
    """
    if dtype == "int64":
        return keras.layers.IntegerLookup(
            vocabulary=values or [-2], mask_token=S.PAD_ID, num_oov_indices=1,
            vocabulary_dtype="int64", name=name)
    return keras.layers.StringLookup(
        vocabulary=values or ["\x00<empty>"], mask_token=S.PAD_KEY.decode(), num_oov_indices=1,
        name=name)


def lookup_size(values: list, oov_buckets: int = 0) -> int:
    """Rows an embedding table needs for a lookup over `values`: padding + OOV + vocabulary
    (an empty one has its placeholder) + the hashed OOV buckets."""
    return values_end(values) + oov_buckets


def values_end(values: list) -> int:
    """The first index after the vocabulary's values: where the OOV buckets start."""
    return max(len(values), 1) + 2


def bucketed(indices: tf.Tensor, raw: tf.Tensor, end: int, oov_buckets: int) -> tf.Tensor:
    """`make_lookup`'s indices (any shape, int64) with every OOV index (1) of a raw value
    replaced by its bucket row end + fingerprint(value) mod oov_buckets; unchanged for 0."""
    if not oov_buckets:
        return indices
    text = raw if raw.dtype == tf.string else tf.strings.as_string(raw)
    bucket = tf.strings.to_hash_bucket_fast(text, oov_buckets)
    return tf.where(indices == OOV_INDEX, end + bucket, indices)


def unbucketed(indices: tf.Tensor, end: int) -> tf.Tensor:
    """Bucket rows (>= end) back to the OOV index: for tables with one row per value."""
    return tf.where(indices >= end, tf.constant(OOV_INDEX, indices.dtype), indices)
