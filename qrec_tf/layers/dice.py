"""Dice: DIN's data-adaptive activation (Zhou et al., KDD'18)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="qrec_tf")
class Dice(keras.layers.Layer):
    """out = p * x + (1 - p) * alpha * x with p = sigmoid(BatchNorm(x)).

    A PReLU whose bend follows the data: the batch normalisation has no scale or offset, so p is
    the probability that x is above the running mean of its channel. `alpha` is per channel (the
    last axis) and starts at 0, i.e. Dice starts as a smooth ReLU-like gate.

    Call: inputs [..., channels] -> [..., channels]. `training` selects batch statistics (and
    updates the moving ones) or the moving statistics. An optional `mask` bool [...] (the shape of
    inputs without the channel axis, True = real) keeps padded positions out of the batch
    statistics; their outputs are still computed. Under a strategy with several replicas in
    sync, the batch statistics are those of the global batch (all-reduced over the replicas).
    """

    # True: training normalises with Keras' BatchNormalization layer itself (the same values,
    # more passes over the inputs): kept to time against (benchmarks.peers --variant).
    keras_batch_norm_in_training: bool = False

    def __init__(self, epsilon: float = 1e-9, **kwargs: Any):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.batch_norm = keras.layers.BatchNormalization(
            axis=-1, epsilon=epsilon, center=False, scale=False, name="batch_norm")

    def build(self, input_shape: tuple) -> None:
        self.alpha = self.add_weight(name="alpha", shape=(input_shape[-1],), initializer="zeros")
        self.batch_norm.build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             mask: tf.Tensor | None = None) -> tf.Tensor:
        if training:
            if mask is not None:
                mask = ops.cast(mask, "bool")
            replica = tf.distribute.get_replica_context()
            if replica is not None and replica.num_replicas_in_sync > 1:
                p = ops.sigmoid(self._synchronized_batch_norm(inputs, mask, replica))
            elif self.keras_batch_norm_in_training:
                p = ops.sigmoid(self.batch_norm(inputs, training=training, mask=mask))
            else:
                return self._training_call(inputs, mask)
        else:
            # The batch normalisation of inference written out: 3 element-wise passes instead
            # of BatchNormalization's 5, on the largest tensors of a DIN (serving latency).
            # float32 as BatchNormalization computes it (float16 can overflow in x - mean).
            norm = self.batch_norm
            scale = ops.rsqrt(ops.cast(norm.moving_variance, "float32") + norm.epsilon)
            shift = -ops.cast(norm.moving_mean, "float32") * scale
            p = ops.cast(ops.sigmoid(ops.cast(inputs, "float32") * scale + shift), inputs.dtype)
        alpha = ops.cast(self.alpha, inputs.dtype)
        return inputs * (alpha + (1.0 - alpha) * p)

    def _training_call(self, inputs: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
        """Dice in training on one replica: what the Keras BatchNormalization layer's batch
        statistics give (the same ops on the same values in the forward), with the moving
        statistics updated, in fewer passes over the [..., channels] tensor: the mask is a
        [..., 1] weight, never broadcast to the inputs' shape, and the gradient is written out
        (`_dice_with_batch_statistics`). On a DIN's attention ([batch, seq_len, units]) this is a
        large part of the step (docs/RESULTS.md, issue 21). inputs [..., channels], mask bool [...]
        or None -> [..., channels]."""
        norm = self.batch_norm
        weight = None if mask is None else tf.cast(mask, tf.float32)[..., None]
        out, mean, variance = _dice_with_batch_statistics(
            tf.cast(inputs, tf.float32), weight, tf.cast(self.alpha, tf.float32), norm.epsilon)
        norm.moving_mean.assign(norm.moving_mean * norm.momentum + mean * (1.0 - norm.momentum))
        norm.moving_variance.assign(
            norm.moving_variance * norm.momentum + variance * (1.0 - norm.momentum))
        return tf.cast(out, inputs.dtype)

    def _synchronized_batch_norm(self, inputs: tf.Tensor, mask: tf.Tensor | None,
                                 replica: tf.distribute.ReplicaContext) -> tf.Tensor:
        """The training batch normalisation of `batch_norm` with the statistics of the global
        batch (summed over all replicas), so that N replicas compute what one replica computes
        on their N batches together (up to float reordering). Keras' `synchronized=True` would
        drop the mask, hence this. inputs [..., channels], mask bool [...] or None."""
        norm = self.batch_norm
        x = tf.cast(inputs, tf.float32)
        axes = list(range(len(x.shape) - 1))
        weight = (tf.ones_like(x[..., :1]) if mask is None
                  else tf.cast(mask, tf.float32)[..., None])
        sums = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(
            [tf.reduce_sum(x * weight, axes), tf.reduce_sum(weight * tf.ones_like(x), axes)],
            axis=0))
        total, count = tf.split(sums, 2)
        # BatchNormalization adds Keras' epsilon to a masked count; the same here. Without a
        # mask, no rows at all (a packed attention's batches without history) give zeros.
        count = tf.maximum(count, 1.0) if mask is None else count + keras.config.epsilon()
        mean = total / count
        deviations = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(
            tf.square(x - mean) * weight, axes))
        variance = deviations / count
        norm.moving_mean.assign(norm.moving_mean * norm.momentum + mean * (1.0 - norm.momentum))
        norm.moving_variance.assign(
            norm.moving_variance * norm.momentum + variance * (1.0 - norm.momentum))
        out = tf.nn.batch_normalization(x, mean, variance, None, None, norm.epsilon)
        return tf.cast(out, inputs.dtype)

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        # `mask` is an explicit argument consumed here: no Keras mask rides on the outputs (and
        # Keras does not warn that one is dropped when `mask` is passed by keyword).
        return None

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


def _dice_with_batch_statistics(x: tf.Tensor, weight: tf.Tensor | None, alpha: tf.Tensor,
                                epsilon: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """y = x (alpha + (1 - alpha) p), p = sigmoid(n), n = (x - mean) / sqrt(variance + epsilon)
    with the weighted batch moments over every axis but the last (weight [..., 1] in {0, 1} or
    None: all ones). float32 x [..., channels], alpha [channels] -> (y [..., channels], mean,
    variance [channels]; the moments without gradient: they feed only the moving statistics).

    The forward is Keras' BatchNormalization's (masked count + Keras' epsilon, tf.nn.moments'
    mean and variance without a mask, tf.nn.batch_normalization). The backward, by hand (fewer
    passes over the inputs than autodiff through those ops): with g = dL/dy,
    g_n = g x (1 - alpha) p (1 - p), N the weighted count, w the weight,
    r = 1 / sqrt(variance + epsilon),
      dL/dalpha = sum g x (1 - p),
      dL/dx = g (alpha + (1 - alpha) p) + r (g_n - w (sum g_n + n sum g_n n) / N)
    (the sums over every position: padded ones' outputs use the batch moments too)."""

    @tf.custom_gradient
    def dice(x, alpha):
        return _forward_and_gradient(x, weight, alpha, epsilon)

    return dice(x, alpha)


def _forward_and_gradient(x, weight, alpha, epsilon):
    """`_dice_with_batch_statistics`' outputs and its gradient function."""
    axes = list(range(len(x.shape) - 1))
    if weight is None:
        count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        # tf.nn.moments' values, and zeros (not NaN) for no rows at all: a packed attention
        # (DINAttention) hands over only the real positions, possibly none.
        mean = tf.reduce_sum(x, axes) / tf.maximum(count, 1.0)
        variance = tf.reduce_sum(tf.math.squared_difference(x, mean), axes) / tf.maximum(
            count, 1.0)
    else:
        # BatchNormalization adds Keras' epsilon to a masked count; the same here.
        count = tf.reduce_sum(weight) + keras.config.epsilon()
        mean = tf.reduce_sum(x * weight, axes) / count
        variance = tf.reduce_sum(tf.square((x - mean) * weight), axes) / count
    scale = tf.math.rsqrt(variance + epsilon)
    n = x * scale - mean * scale          # as tf.nn.batch_normalization computes it
    p = tf.sigmoid(n)
    gate = alpha + (1.0 - alpha) * p
    y = x * gate

    def gradient(dy, d_mean=None, d_variance=None):
        g_x = dy * x
        d_alpha = tf.reduce_sum(g_x - g_x * p, axes)
        g_n = g_x * ((1.0 - alpha) * p * (1.0 - p))
        sum_g = tf.reduce_sum(g_n, axes)
        sum_gn = tf.reduce_sum(g_n * n, axes)
        correction = (sum_g + n * sum_gn) / count
        if weight is not None:
            correction = correction * weight
        d_x = dy * gate + scale * (g_n - correction)
        return d_x, d_alpha

    return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), gradient
