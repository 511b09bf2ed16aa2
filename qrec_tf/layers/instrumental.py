"""IV4Rec+'s split of an embedding into a causal and a non-causal part with instrumental variables
(Si et al., "Enhancing Recommendation with Search Data in a Causal Learning Manner", TOIS 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="qrec_tf")
class InstrumentalDecomposition(keras.layers.Layer):
    """Decomposes a treatment embedding with its instruments and recombines the parts.

    - Stage 1 (the regression of the treatment on its instruments): causal = MLP(instrument),
      Dense(units[i], relu) layers then a linear Dense(dim). It is trained by `first_stage_loss`,
      the squared error to the treatment averaged over dimensions and over the rows that have
      instruments, with the treatment as a fixed target (no gradient flows into it from this loss).
    - The causal part is the fitted value, the non-causal part the residual treatment - causal.
    - Recombination with a learned gate w = sigmoid(Dense(1)([causal, treatment])):
      output = w * causal + (1 - w) * treatment = causal + (1 - w) * non_causal.
    A row without instruments (has_instrument False) keeps its treatment as output (w = 0) and is
    left out of the loss.

    Call: treatment [batch, dim], instrument [batch, iv_dim], has_instrument bool [batch] -> dict
    with "output", "causal", "non_causal" [batch, dim], "gate" [batch] and "first_stage_loss"
    (float32 scalar, 0 when no row has instruments).
    """

    def __init__(self, dim: int, units: Sequence[int] = (64,), **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = dim
        self.units = [int(u) for u in units]
        self.stage1 = keras.Sequential(
            [keras.layers.Dense(n, activation="relu", name=f"stage1_dense{i}")
             for i, n in enumerate(self.units)]
            + [keras.layers.Dense(dim, name="stage1_fit")], name="stage1")
        self.gate = keras.layers.Dense(1, activation="sigmoid", name="gate")

    def build(self, treatment_shape: tuple, instrument_shape: tuple | None = None,
              has_instrument_shape: tuple | None = None) -> None:
        self.stage1.build(instrument_shape or treatment_shape)
        self.gate.build((None, 2 * self.dim))

    def call(self, treatment: tf.Tensor, instrument: tf.Tensor,
             has_instrument: tf.Tensor) -> dict:
        causal = ops.cast(self.stage1(instrument), treatment.dtype)
        has = ops.expand_dims(ops.cast(has_instrument, "bool"), -1)          # [batch, 1]
        gate = ops.cast(self.gate(ops.concatenate([causal, treatment], axis=-1)), treatment.dtype)
        gate = ops.where(has, gate, ops.zeros_like(gate))
        output = gate * causal + (1 - gate) * treatment
        error = ops.mean(ops.square(ops.cast(causal, "float32") - ops.cast(
            ops.stop_gradient(treatment), "float32")), axis=-1)
        rows = ops.cast(has[:, 0], "float32")
        loss = ops.sum(error * rows) / ops.maximum(ops.sum(rows), 1.0)
        return {"output": output, "causal": causal, "non_causal": treatment - causal,
                "gate": gate[:, 0], "first_stage_loss": loss}

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "units": list(self.units)}
