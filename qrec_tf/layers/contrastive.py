"""Bilinear similarity s(a, b) = tanh(a^T W b) between queries and items (docs/PAPER.md eq 15)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class BilinearSimilarity(keras.layers.Layer):
    """s(a, b) = tanh(a^T W b) with a learned W [dim, dim]; tanh keeps scores in (-1, 1), so the
    temperature of the contrastive loss alone sets how peaked it is.

    Call: a [batch, dim] with b [batch, n, dim] -> [batch, n], or b [batch, dim] -> [batch].
    `pairwise(a, b)`: a [batch, dim] with b [n, dim] shared by every row -> [batch, n].
    """

    def __init__(self, dim: int, kernel_initializer: Any = "glorot_uniform", **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, a_shape: tuple, b_shape: tuple | None = None) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(self.dim, self.dim),
                                      initializer=self.kernel_initializer)

    def call(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        projected = ops.matmul(a, self.kernel)                              # a^T W: [batch, dim]
        if len(b.shape) == 2:
            return ops.tanh(ops.sum(projected * b, axis=-1))
        return ops.tanh(ops.einsum("bd,bnd->bn", projected, b))

    def pairwise(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        """a [batch, dim], b [n, dim] -> s(a_i, b_j) [batch, n]: one matrix product."""
        return ops.tanh(ops.matmul(ops.matmul(a, self.kernel), ops.transpose(b)))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
