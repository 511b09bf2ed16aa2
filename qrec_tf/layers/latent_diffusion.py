"""Latent diffusion over sparse item vectors (L-DiffRec, Wang et al. SIGIR 2023): per-group
encoders, a Gaussian diffusion in the concatenated latent space, per-group decoders."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from qrec_tf.layers.diffusion import GaussianDiffusion
from qrec_tf.layers.embedding import sparse_rows
from qrec_tf.layers.group_decoder import GroupDecoder
from qrec_tf.layers.group_encoder import GroupEncoder


@keras.saving.register_keras_serializable(package="qrec_tf")
class LatentDiffusion(keras.layers.Layer):
    """x -> z_0 = encoder(x) -> the diffusion's x_0 prediction in latent space -> decoder -> x.

    Item vectors are sparse and given by their entries: batch_row int [E], row int [E] (the
    item's row in group order, see GroupEncoder) and value float [E], the entry's deviation
    from the neutral value (v = x - r_0; every other item has v = 0). Scores are deviations too
    (x_hat = r_0 + v_hat). L = C * units, the latent width; N items.

    Training (`training_loss`): z_t = q_sample(encoder(v_input), t, noise [batch, L]);
    v_hat = decoder(denoiser(z_t, t)) (+ skip); the loss is the squared error summed over all N
    items against v_target (the dense diffusion's, times N), computed from the entries and the
    decoder's closed-form sum of squares (GroupDecoder.squared_sum): nothing [batch, N] exists.
    With `residual`, v_hat also gets a learned per-item skip of the input's visible entries,
    skip[i, 0] relu(v_i) - skip[i, 1] relu(-v_i) (the dense denoiser's skip, in item space).

    Inference (`item_scores`): the diffusion's reverse process from z = encoder(v) (DiffRec's
    deterministic one), decoded: float32 [batch, N] in group order.
    """

    def __init__(self, encoder: GroupEncoder, diffusion: GaussianDiffusion,
                 decoder: GroupDecoder, residual: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if encoder.group_sizes != decoder.group_sizes or encoder.units != decoder.units:
            raise ValueError("encoder and decoder need the same groups and units")
        self.encoder, self.diffusion, self.decoder = encoder, diffusion, decoder
        self.residual = residual
        self.items = decoder.items
        self.latent_width = decoder.groups * decoder.units
        self.diffusion.build((None, self.latent_width))
        if residual:
            # Per item and sign, how much of the visible input passes straight through.
            self.skip = self.add_weight(name="skip", shape=(self.items, 2), initializer="ones")
        self.built = True

    @property
    def steps(self) -> int:
        return self.diffusion.steps

    def encode(self, batch_row: tf.Tensor, row: tf.Tensor, value: tf.Tensor, batch: tf.Tensor,
               training: bool | None = None) -> tf.Tensor:
        """float32 [batch, L]."""
        return self.encoder(batch_row, row, value, batch=batch, training=training)

    def _skip(self, row: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
        """float32 [E]: the skip's part of the score at each entry."""
        if not self.residual:
            return ops.zeros_like(value)
        weights = sparse_rows(self.skip, ops.cast(row, "int32"))
        return weights[:, 0] * ops.relu(value) - weights[:, 1] * ops.relu(-value)

    def training_loss(self, batch_row: tf.Tensor, row: tf.Tensor, input_value: tf.Tensor,
                      target_value: tf.Tensor, batch: tf.Tensor, timesteps: tf.Tensor,
                      noise: tf.Tensor, training: bool | None = True) -> tf.Tensor:
        """Per-query squared error summed over the N items, float32 [batch].

        Args: batch_row, row int [E] and input_value, target_value float [E] (the same entries
        of the input and target vectors; an input value is 0 where a positive is masked out);
        batch int scalar; timesteps int [batch]; noise float [batch, L].
        """
        batch_row = ops.cast(batch_row, "int32")
        z_t = self.diffusion.q_sample(self.encode(batch_row, row, input_value, batch, training),
                                      timesteps, noise)
        z_0 = self.diffusion.denoiser(z_t, timesteps, training=training)
        decoded = self.decoder.at(z_0, batch_row, row)                    # [E]
        predicted = decoded + self._skip(row, input_value)
        # sum_i (v_hat_i - v_i)^2 = sum_i decoded_i^2 (v_i = 0 off the entries)
        #   - sum_e decoded_e^2 + sum_e (v_hat_e - v_e)^2
        correction = ops.segment_sum(ops.square(predicted - target_value) - ops.square(decoded),
                                     batch_row, num_segments=batch)
        # The sum over items, not the mean: divided by N = 2M, the weights' gradients fall far
        # below Adam's epsilon (1e-7) and their steps shrink with N (measured: at N = 200k the
        # mean's loss stalled after one epoch, docs/RESULTS.md).
        sse = self.decoder.squared_sum(z_0) + correction
        if self.diffusion.reweight:
            sse = sse * self.diffusion._at(self.diffusion.loss_weights, timesteps)[:, 0]
        return sse

    def item_scores(self, batch_row: tf.Tensor, row: tf.Tensor, value: tf.Tensor,
                    batch: tf.Tensor, noise: tf.Tensor | None = None) -> tf.Tensor:
        """float32 [batch, N] (group order): the denoised, decoded vectors. `noise` [batch, L]
        is used only when the diffusion's sampling_steps > 0."""
        z_0 = self.diffusion.denoise(self.encode(batch_row, row, value, batch, False), noise)
        scores = self.decoder(z_0)
        if not self.residual:
            return scores
        indices = tf.stack([tf.cast(batch_row, tf.int32), tf.cast(row, tf.int32)], axis=1)
        return tf.tensor_scatter_nd_add(scores, indices, self._skip(row, value))

    def call(self, batch_row: tf.Tensor, row: tf.Tensor, value: tf.Tensor, *,
             batch: tf.Tensor) -> tf.Tensor:
        return self.item_scores(batch_row, row, value, batch)

    def get_config(self) -> dict:
        return {**super().get_config(), "residual": self.residual,
                **{name: keras.saving.serialize_keras_object(getattr(self, name))
                   for name in ("encoder", "diffusion", "decoder")}}

    @classmethod
    def from_config(cls, config: dict) -> "LatentDiffusion":
        config = dict(config)
        for name in ("encoder", "diffusion", "decoder"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)
