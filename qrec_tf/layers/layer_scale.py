"""A learned per-channel scale on a branch's output (LayerScale), to let a branch start small."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class LayerScale(keras.layers.Layer):
    """out = gamma * x, gamma a learned vector over the last axis, initialised to `init_value`.

    LayerScale (Touvron et al., "Going deeper with Image Transformers", ICCV 2021) and ReZero
    (Bachlechner et al. 2020) start a residual branch at (near) zero so that it joins a network
    only as far as training finds it useful. QueryRec uses it on the query side's inputs of the
    CTR MLP (docs/ARCHITECTURE.md, "The query branch"): at `init_value` 0 the model starts as its
    DIN backbone, and the gradient of gamma, <dL/d(out), x>, lets the branch grow when it helps.

    Call: x [..., channels] -> [..., channels].
    """

    def __init__(self, init_value: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape: tuple) -> None:
        self.gamma = self.add_weight(
            name="gamma", shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "init_value": self.init_value}
