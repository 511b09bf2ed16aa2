"""An Embedding whose cost per step does not grow with the size of its table, and the row read
it is built on."""

from __future__ import annotations

import keras
import tensorflow as tf


def sparse_rows(variable: keras.Variable | tf.Variable, ids: tf.Tensor) -> tf.Tensor:
    """variable[ids] read as a resource gather of those rows only: [*ids.shape, *row shape].

    `keras.ops.take` on a variable reads it as a whole tensor first: O(table) per call, and once
    an optimizer has scattered rows into the variable, TensorFlow copies the whole table on each
    such read (its copy-on-read mode for sparsely written variables). This costs O(ids), and its
    gradient stays a `tf.IndexedSlices` (measured: docs/RESULTS.md, "Training throughput and
    vocabulary size" and the latent diffusion's step at 2M items).
    """
    # A Keras variable is not a tf.Variable: tf.nn.embedding_lookup would read it whole. Its
    # `.value` is the tf.Variable underneath, which embedding_lookup gathers from.
    table = variable.value if isinstance(variable, keras.Variable) else variable
    return tf.nn.embedding_lookup(table, ids)


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
        outputs = sparse_rows(self.embeddings, inputs)
        return tf.cast(outputs, self.compute_dtype)


def mini_batch_aware_l2(table: keras.Variable | tf.Variable, indices: tf.Tensor,
                        inverse_frequency: tf.Tensor) -> tf.Tensor:
    """DIN's mini-batch aware L2 regularisation (Zhou et al., KDD'18, eqs 5-6) of one table.

    sum over the distinct rows j among `indices` of ||w_j||^2 / n_j: only the rows a batch
    touches are penalised (a plain L2 over a table of millions of rows would touch them all every
    step), and rare ids, whose rows the click loss moves seldom and overfits easily, are pulled
    harder than frequent ones.

    table: the embedding variable [rows, dim]; indices: int [...] row indices of the batch (any
    shape, repeats allowed); inverse_frequency: float32 [rows], 1 / n_j (0 for rows that are not
    penalised: padding, OOV). Returns a float32 scalar. The rows are read with a resource
    gather, so the gradient stays a tf.IndexedSlices over the touched rows.
    """
    rows, _ = tf.unique(tf.reshape(tf.cast(indices, tf.int64), [-1]))
    vectors = tf.cast(sparse_rows(table, rows), tf.float32)
    weights = tf.gather(tf.cast(inverse_frequency, tf.float32), rows)
    return tf.reduce_sum(weights * tf.reduce_sum(tf.square(vectors), axis=-1))
