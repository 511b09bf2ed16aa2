"""Dice: DIN's data-adaptive activation (Zhou et al., KDD'18)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class Dice(keras.layers.Layer):
    """out = p * x + (1 - p) * alpha * x with p = sigmoid(BatchNorm(x)).

    A PReLU whose bend follows the data: the batch normalisation has no scale or offset, so p is
    the probability that x is above the running mean of its channel. `alpha` is per channel (the
    last axis) and starts at 0, i.e. Dice starts as a smooth ReLU-like gate.

    Call: inputs [..., channels] -> [..., channels]. `training` selects batch statistics (and
    updates the moving ones) or the moving statistics. An optional `mask` bool [...] (the shape of
    inputs without the channel axis, True = real) keeps padded positions out of the batch
    statistics; their outputs are still computed.
    """

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
            p = ops.sigmoid(self.batch_norm(inputs, training=training, mask=mask))
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

    def compute_mask(self, inputs: Any, previous_mask: Any = None) -> None:
        # `mask` is an explicit argument consumed here: no Keras mask rides on the outputs (and
        # Keras does not warn that one is dropped when `mask` is passed by keyword).
        return None

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}
