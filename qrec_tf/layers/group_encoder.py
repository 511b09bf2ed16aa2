"""Per-group encoders of a sparse item vector into a latent vector (L-DiffRec, Wang et al. SIGIR
2023: each item group's slice of the vector is compressed by its own small encoder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import keras
import numpy as np
from keras import ops

from qrec_tf.layers.embedding import sparse_rows

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class GroupEncoder(keras.layers.Layer):
    """z[b, c] = act(Dense_c(v_b restricted to group c)) for every group c, concatenated.

    Items are rows 0 .. N-1 in group order: group c holds the `group_sizes[c]` rows after those
    of the groups before it. The input vector v_b is sparse (a query shows a few items of
    millions), so the layer takes its non-zero entries, not [batch, N]: the product with a
    group's kernel is the sum of the kernel rows of the entries in that group, computed as a
    gather and a segment sum. Cost and memory grow with the entries, not with N, and the
    kernel's gradient touches only the entries' rows (tf.IndexedSlices).

    With `split_signs`, positive and negative entries are read through separate kernel rows
    (as Dense([relu(v) || relu(-v)]): clicks and shown-not-clicked items both point to the
    query's topic, which one weight per item cannot express). Entries are dropped out
    (`dropout`, training only) before the sign split.

    Weights: kernel [S N, units] (S = 2 with split_signs, else 1; rows N .. 2N - 1 read the
    negative entries), bias [C, units].

    Call: batch_row int [E] (the entry's row in the batch), row int [E] (its item row in group
    order), value float [E] (v at that entry), batch= int scalar (a keyword: Keras takes only
    tensors positionally) -> float32 [batch, C * units],
    group c in columns c * units .. (c + 1) * units - 1.
    """

    def __init__(self, group_sizes: Sequence[int], units: int, split_signs: bool = False,
                 dropout: float = 0.0, activation: str | None = "tanh", **kwargs: Any):
        super().__init__(**kwargs)
        if not group_sizes or min(group_sizes) < 1 or units < 1:
            raise ValueError("group_sizes must be non-empty and positive, units >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.group_sizes = [int(size) for size in group_sizes]
        self.units, self.split_signs, self.dropout = units, split_signs, dropout
        self.activation = keras.activations.get(activation)
        self._activation_name = activation
        self.items = sum(self.group_sizes)
        self.groups = len(self.group_sizes)
        self.input_dropout = keras.layers.Dropout(dropout)
        self._group_of_row = np.repeat(np.arange(self.groups, dtype=np.int32), self.group_sizes)
        self.kernel = self.add_weight(
            name="kernel", shape=((2 if split_signs else 1) * self.items, units),
            initializer="glorot_normal")
        self.bias = self.add_weight(name="bias", shape=(self.groups, units),
                                    initializer=keras.initializers.RandomNormal(stddev=0.001))
        self.built = True

    def call(self, batch_row: tf.Tensor, row: tf.Tensor, value: tf.Tensor, batch: tf.Tensor,
             training: bool | None = None) -> tf.Tensor:
        value = self.input_dropout(ops.cast(value, "float32"), training=training)
        row = ops.cast(row, "int32")
        if self.split_signs:
            row = ops.where(value < 0, row + self.items, row)
            value = ops.abs(value)
        group = ops.take(ops.convert_to_tensor(self._group_of_row), ops.mod(row, self.items))
        segment = ops.cast(batch_row, "int32") * self.groups + group
        summed = ops.segment_sum(sparse_rows(self.kernel, row) * value[:, None], segment,
                                 num_segments=batch * self.groups)
        z = ops.reshape(summed, (batch, self.groups, self.units)) + self.bias
        return ops.reshape(self.activation(z), (batch, self.groups * self.units))

    def get_config(self) -> dict:
        return {**super().get_config(), "group_sizes": self.group_sizes, "units": self.units,
                "split_signs": self.split_signs, "dropout": self.dropout,
                "activation": self._activation_name}
