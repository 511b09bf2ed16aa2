"""Bilinear similarity s(a, b) = tanh(a^T W b) between queries and items (docs/PAPER.md eq 15)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class BilinearSimilarity(keras.layers.Layer):
    """s(a, b) = tanh(a^T W b) with a learned W [dim, b_dim]; tanh keeps scores in (-1, 1), so
    the temperature of the contrastive loss alone sets how peaked it is. With `squash=False` the
    score is the plain a^T W b (a logit term: QueryRec's bilinear query fusion).

    Call: a [batch, dim] with b [batch, n, b_dim] -> [batch, n], or b [batch, b_dim] -> [batch].
    `pairwise(a, b)`: a [batch, dim] with b [n, b_dim] shared by every row -> [batch, n].
    """

    def __init__(self, dim: int, kernel_initializer: Any = "glorot_uniform",
                 b_dim: int | None = None, squash: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = dim
        self.b_dim = dim if b_dim is None else b_dim
        self.squash = squash
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, a_shape: tuple, b_shape: tuple | None = None) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(self.dim, self.b_dim),
                                      initializer=self.kernel_initializer)

    def _out(self, scores: tf.Tensor) -> tf.Tensor:
        return ops.tanh(scores) if self.squash else scores

    def call(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        projected = ops.matmul(a, ops.cast(self.kernel, a.dtype))          # a^T W: [batch, b_dim]
        if len(b.shape) == 2:
            return self._out(ops.sum(projected * b, axis=-1))
        return self._out(ops.einsum("bd,bnd->bn", projected, b))

    def pairwise(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        """a [batch, dim], b [n, b_dim] -> s(a_i, b_j) [batch, n]: one matrix product."""
        return self._out(ops.matmul(ops.matmul(a, ops.cast(self.kernel, a.dtype)),
                                    ops.transpose(b)))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "b_dim": self.b_dim,
                "squash": self.squash,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
