"""Per-group decoders of a latent vector back to item scores (L-DiffRec, Wang et al. SIGIR 2023),
with the squared error over every item computed without forming [batch, N]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import keras
import numpy as np
from keras import ops

from qrec_tf.layers.embedding import sparse_rows

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class GroupDecoder(keras.layers.Layer):
    """s[b, i] = z[b, group(i)] . W[i] + bias[i]: group c's items are scored by a linear
    Dense_c from group c's latent slice alone.

    Items are rows 0 .. N-1 in group order (as in GroupEncoder); z is [batch, C * units] with
    group c in columns c * units .. (c + 1) * units - 1. Weights: kernel [N, units], bias [N].

    - `call(z)`: float32 [batch, N], all scores (generation; batch * N floats).
    - `at(z, batch_row [E], row [E])`: float32 [E], the scores of given (batch row, item row)
      pairs only.
    - `squared_sum(z, offset)`: float32 [batch], sum_i (s[b, i] - offset)^2 over all N items,
      exactly, without forming [batch, N]: per group, with W_c [n_c, units] and
      b'_c = bias_c - offset,
        sum_{i in c} (z_c W_i + b'_i)^2 = z_c (W_c^T W_c) z_c^T + 2 z_c (W_c^T b'_c) + |b'_c|^2,
      which costs 2 n_c units^2 for the Gram matrix W_c^T W_c instead of 2 batch n_c units for
      the scores (and memory units^2 instead of batch n_c).
    The decoder is linear so that this sum has the closed form; the latent it reads comes from
    a non-linear denoiser.
    """

    def __init__(self, group_sizes: Sequence[int], units: int, **kwargs: Any):
        super().__init__(**kwargs)
        if not group_sizes or min(group_sizes) < 1 or units < 1:
            raise ValueError("group_sizes must be non-empty and positive, units >= 1")
        self.group_sizes = [int(size) for size in group_sizes]
        self.units = units
        self.items = sum(self.group_sizes)
        self.groups = len(self.group_sizes)
        self._group_of_row = np.repeat(np.arange(self.groups, dtype=np.int32), self.group_sizes)
        self.kernel = self.add_weight(name="kernel", shape=(self.items, units),
                                      initializer="glorot_normal")
        self.bias = self.add_weight(name="bias", shape=(self.items,),
                                    initializer=keras.initializers.RandomNormal(stddev=0.001))
        self.built = True

    def _slices(self, z: tf.Tensor) -> list[tf.Tensor]:
        """z [batch, C * units] -> C tensors [batch, units]."""
        return ops.split(z, self.groups, axis=-1) if self.groups > 1 else [z]

    def _per_group(self, values: tf.Tensor) -> list[tf.Tensor]:
        """values [N, ...] -> C tensors [n_c, ...] (group c's rows)."""
        if self.groups == 1:
            return [values]
        return ops.split(values, np.cumsum(self.group_sizes)[:-1].tolist(), axis=0)

    def call(self, z: tf.Tensor) -> tf.Tensor:
        scores = [ops.matmul(z_c, ops.transpose(kernel_c)) + bias_c
                  for z_c, kernel_c, bias_c in zip(self._slices(z), self._per_group(self.kernel),
                                                   self._per_group(self.bias))]
        return ops.concatenate(scores, axis=-1) if len(scores) > 1 else scores[0]

    def at(self, z: tf.Tensor, batch_row: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
        row = ops.cast(row, "int32")
        group = ops.take(ops.convert_to_tensor(self._group_of_row), row)
        latent = ops.take(ops.reshape(z, (-1, self.units)),
                          ops.cast(batch_row, "int32") * self.groups + group, axis=0)
        return (ops.sum(latent * sparse_rows(self.kernel, row), axis=-1)
                + sparse_rows(self.bias, row))

    def squared_sum(self, z: tf.Tensor, offset: float = 0.0) -> tf.Tensor:
        total = 0.0
        for z_c, kernel_c, bias_c in zip(self._slices(z), self._per_group(self.kernel),
                                         self._per_group(self.bias)):
            shifted = bias_c - offset
            gram = ops.matmul(ops.transpose(kernel_c), kernel_c)             # [units, units]
            cross = ops.matmul(shifted[None, :], kernel_c)                   # [1, units]
            total = total + (ops.sum(ops.matmul(z_c, gram) * z_c, axis=-1)
                             + 2.0 * ops.sum(z_c * cross, axis=-1) + ops.sum(shifted ** 2))
        return total

    def get_config(self) -> dict:
        return {**super().get_config(), "group_sizes": self.group_sizes, "units": self.units}
