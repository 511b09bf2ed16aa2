"""An Embedding whose cost per step does not grow with the size of its table."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class SparseEmbedding(keras.layers.Embedding):
    """`keras.layers.Embedding` that reads only the looked-up rows of its table.

    Keras' Embedding gathers from the variable read as a whole tensor, which costs O(table) per
    step (and a copy of the table once an optimizer scatters into it). A resource gather on the
    underlying variable reads just the rows, and its gradient stays a `tf.IndexedSlices`, which
    `qrec_tf.optimizers.LazyAdam` applies row by row (docs/ARCHITECTURE.md, "Embeddings").

    Call: ids int [batch, ...] -> [batch, ..., output_dim].
    """

    def call(self, inputs):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int64)
        outputs = tf.nn.embedding_lookup(self.embeddings.value, inputs)
        return tf.cast(outputs, self.compute_dtype)
