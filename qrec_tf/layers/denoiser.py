"""The reverse-process network of the query-item diffusion: an MLP that predicts x_0 from (x_t, t)
(DiffRec's DNN, Wang et al. SIGIR 2023; docs/PAPER.md "Diffusion augmentation")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


def step_embedding(timesteps: tf.Tensor, dim: int, max_period: float = 10_000.0) -> tf.Tensor:
    """Sinusoidal embedding of diffusion steps (as in DDPM / DiffRec).

    Args:
      timesteps: int or float [batch] step indices.
      dim: embedding width; an odd width gets a zero last column.
      max_period: the longest wavelength, in steps.

    Returns:
      float32 [batch, dim]: [cos(t f_0), ..., cos(t f_{h-1}), sin(t f_0), ..., sin(t f_{h-1})]
      with h = dim // 2 and f_j = max_period^(-j / h).
    """
    half = dim // 2
    frequencies = ops.exp(-math.log(max_period) * ops.arange(half, dtype="float32") / half)
    angles = ops.cast(timesteps, "float32")[:, None] * frequencies[None, :]
    embedding = ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)
    if dim % 2:
        embedding = ops.pad(embedding, [[0, 0], [0, 1]])
    return embedding


@keras.saving.register_keras_serializable(package="qrec_tf")
class Denoiser(keras.layers.Layer):
    """x0_hat = MLP([x_t || Dense(step_embedding(t))]).

    Computed without forming the concatenation (see call), to the same result.

    DiffRec's DNN: the step embedding passes through one Dense layer and is concatenated to the
    (optionally dropped-out and L2-normalised) input; `hidden_units` are tanh layers; the output
    layer is linear and as wide as the input (one score per item of the item space).
    Weights are Xavier-normal and biases N(0, 0.001), DiffRec's initialisation.
    With `residual`, x0_hat = x_t + MLP(...): with little noise x_t is already close to x_0, so
    the MLP spends its capacity on what differs (the masked positives) instead of copying x_t.
    With `split_signs`, the MLP reads [max(x_t, 0), max(-x_t, 0)] (2 x items wide) instead of
    x_t: a query-item vector holds two kinds of evidence, clicks (> 0) and shown-not-clicked
    items (< 0), and both point to the query's topic; a first layer that sees them through one
    weight per item must map them to opposite directions.

    Call: x_t float [batch, items], timesteps int [batch] -> x0_hat float [batch, items].
    """

    def __init__(self, hidden_units: list[int] | tuple[int, ...] = (1000,),
                 step_embedding_dim: int = 10, dropout: float = 0.0, normalize_input: bool = False,
                 activation: str = "tanh", residual: bool = False, split_signs: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if step_embedding_dim < 1 or any(units < 1 for units in hidden_units):
            raise ValueError("hidden_units and step_embedding_dim must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden_units = list(hidden_units)
        self.step_embedding_dim = step_embedding_dim
        self.dropout = dropout
        self.normalize_input = normalize_input
        self.activation = activation
        self.residual = residual
        self.split_signs = split_signs
        self.step_projection = keras.layers.Dense(step_embedding_dim, name="step_projection",
                                                  **self._initializers())
        self.input_dropout = keras.layers.Dropout(dropout)
        self.hidden = [keras.layers.Dense(units, activation=activation, name=f"hidden_{i}",
                                          **self._initializers())
                       for i, units in enumerate(self.hidden_units)]
        self.output_layer = None

    @staticmethod
    def _initializers() -> dict:
        return dict(kernel_initializer="glorot_normal",
                    bias_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, x_t_shape: tuple, timesteps_shape: tuple | None = None) -> None:
        items = x_t_shape[-1]
        if items is None:
            raise ValueError("Denoiser needs a known item axis width")
        self.step_projection.build((None, self.step_embedding_dim))
        width = items * (2 if self.split_signs else 1) + self.step_embedding_dim
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.output_layer = keras.layers.Dense(items, name="output", **self._initializers())
        self.output_layer.build((None, width))
        if self.residual:
            # Per item and sign, how much of x_t passes straight through; starts as x_t itself.
            self.skip = self.add_weight(name="skip", shape=(2, items), initializer="ones")

    def call(self, x_t: tf.Tensor, timesteps: tf.Tensor, training: bool | None = None
             ) -> tf.Tensor:
        steps = self.step_projection(step_embedding(timesteps, self.step_embedding_dim))
        inputs = self.mlp_inputs(x_t, training)
        # The first layer as sum_i inputs_i W_i + steps W_s over slices of its one kernel (the
        # weights stay those of Dense([inputs || steps])): a product of the concatenation would
        # copy it and make backprop compute its gradient, 2 B (S N + E) h flops (a fifth of a
        # step) that nothing reads, since only the step embedding's part leads to weights.
        first = self.hidden[0]
        items = ops.shape(x_t)[-1]
        kernels = ops.split(first.kernel, [items * (i + 1) for i in range(len(inputs))], axis=0)
        h = ops.matmul(steps, kernels[-1]) + first.bias
        for part, kernel in zip(inputs, kernels):
            h = h + ops.matmul(part, kernel)
        h = first.activation(h)
        for layer in self.hidden[1:]:
            h = layer(h)
        out = self.output_layer(h)
        if self.residual:
            out += self.skip[0] * ops.relu(x_t) - self.skip[1] * ops.relu(-x_t)
        return out

    def mlp_inputs(self, x_t: tf.Tensor, training: bool | None) -> list[tf.Tensor]:
        """The MLP's inputs, each [batch, items]: [relu(x), relu(-x)] with split_signs, else
        [x], of the (normalised and) dropped-out x_t.

        Dropout comes before the sign split: at most one of relu(x), relu(-x) is non-zero per
        item, so one mask per item drops exactly what a mask per input column would, with half
        the random draws.
        """
        x = x_t
        if self.normalize_input:
            x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        x = self.input_dropout(x, training=training)
        return [ops.relu(x), ops.relu(-x)] if self.split_signs else [x]

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "step_embedding_dim": self.step_embedding_dim, "dropout": self.dropout,
                "normalize_input": self.normalize_input, "activation": self.activation,
                "residual": self.residual, "split_signs": self.split_signs}
