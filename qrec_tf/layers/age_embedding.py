"""A learned vector per age bucket of an event: what tells a search of an hour ago from one of
nine days ago (time-interval-aware sequence models: TiSASRec, Li et al. WSDM 2020; DIN/DIEN
variants with time gaps)."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

# Bucket edges in hours: finer where effects of a search change fastest (the first hours),
# doubling after a day; the last bucket holds everything older than two weeks.
DEFAULT_AGE_BOUNDARIES_HOURS = (0.25, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 96.0, 168.0, 336.0)
MS_PER_HOUR = 3_600_000.0


def ages_in_hours(timestamp: tf.Tensor, event_timestamps: tf.Tensor) -> tf.Tensor:
    """float32 [rows, L]: hours from each event (int64 ms [rows, L]) to the impression (int64 ms
    [rows]), never negative (a padded event's value is meaningless: mask it)."""
    age_ms = tf.maximum(timestamp[:, None] - event_timestamps, 0)
    return tf.cast(age_ms, tf.float32) / MS_PER_HOUR


@keras.saving.register_keras_serializable(package="qrec_tf")
class AgeEmbedding(keras.layers.Layer):
    """out = table[bucket(age)]: the age in hours [...] -> [..., dim].

    The table starts at zero (`embeddings_initializer`), so a model that adds it to its event
    vectors starts as the model without it, and each bucket's vector grows only as far as the
    loss finds the age useful. Buckets: `boundaries_hours` (sorted, positive) cut the ages into
    len(boundaries) + 1 buckets; bucket 0 is ages below the first edge.
    """

    def __init__(self, dim: int,
                 boundaries_hours: Sequence[float] = DEFAULT_AGE_BOUNDARIES_HOURS,
                 embeddings_initializer: Any = "zeros", **kwargs: Any):
        super().__init__(**kwargs)
        boundaries = [float(b) for b in boundaries_hours]
        if not boundaries or boundaries != sorted(boundaries) or boundaries[0] <= 0:
            raise ValueError(f"boundaries_hours must be sorted and positive, got {boundaries}")
        self.dim = int(dim)
        self.boundaries_hours = tuple(boundaries)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.table = keras.layers.Embedding(len(boundaries) + 1, self.dim,
                                            embeddings_initializer=self.embeddings_initializer,
                                            name="table")

    def build(self, input_shape: tuple) -> None:
        self.table.build(input_shape)

    def bucket(self, ages_hours: tf.Tensor) -> tf.Tensor:
        """int32 [...]: each age's bucket, 0 .. len(boundaries_hours)."""
        return tf.raw_ops.Bucketize(input=tf.cast(ages_hours, tf.float32),
                                    boundaries=list(self.boundaries_hours))

    def call(self, ages_hours: tf.Tensor) -> tf.Tensor:
        # A one-hot product, not the table's gather: with a dozen rows the gradient is then a
        # dense [buckets, dim] matrix instead of IndexedSlices of every event, whose
        # segment-sum and sparse optimizer update cost more than the product (same values).
        weights = tf.convert_to_tensor(self.table.embeddings)
        one_hot = tf.one_hot(self.bucket(ages_hours), self.table.input_dim, dtype=weights.dtype)
        return tf.cast(tf.tensordot(one_hot, weights, 1), self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim,
                "boundaries_hours": list(self.boundaries_hours),
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer)}
