"""Training the diffusion model on query-item vectors, and its size and memory estimate."""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.augment.config import AugmentConfig, AugmentModelConfig
from qrec_tf.augment.generation import generation_batch_size
from qrec_tf.augment.vectors import DenseRows
from qrec_tf.layers.denoiser import Denoiser
from qrec_tf.layers.diffusion import GaussianDiffusion
from qrec_tf.optimizers import FusedAdam


class DiffusionTrainer(keras.Model):
    """Fits a GaussianDiffusion to query vectors with positives masked out of its input.

    All randomness of a training step (the epoch's shuffle, the masks, t, the noise) is a
    stateless function of (seed, optimizer step), and the optimizer step is part of the
    checkpoint: a resumed run takes exactly the steps an unbroken run would. The `fit` input is
    only a step counter (tf.data.Dataset.range(steps_per_epoch)).
    """

    def __init__(self, diffusion: GaussianDiffusion, dense: DenseRows, rows: np.ndarray,
                 batch_size: int, positive_mask_rate: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.diffusion = diffusion
        self._dense = dense
        self._rows = tf.constant(rows, tf.int64)
        self._batch_size = batch_size
        self._mask_rate = positive_mask_rate
        self._seed = seed
        self.steps_per_epoch = max(1, math.ceil(len(rows) / batch_size))
        self._loss = keras.metrics.Mean(name="loss")
        # Layer randomness (the denoiser's dropout) draws from Keras seed generators; their
        # states are reset from the step before every step, so a resumed run draws the same.
        self._seed_states = [v for v in diffusion.non_trainable_variables
                             if v.name == "seed_generator_state"]

    @property
    def metrics(self):
        return [self._loss]

    def build(self, x_shape: tuple) -> None:
        self.diffusion.build(x_shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.diffusion(x)

    def _seed_for(self, step: tf.Tensor, stream: int) -> tf.Tensor:
        return tf.stack([tf.constant(self._seed, tf.int64), step * 8 + stream])

    def sample(self, step: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """The entries of optimizer step `step` (int64 scalar): (batch int32 scalar, batch_row
        int32 [E], column int32 [E], positive bool [E], hidden bool [E]: the positives masked
        out of the input, timesteps int32 [batch]); the epoch's shuffle, the masks and t are
        stateless functions of (seed, step)."""
        epoch, position = step // self.steps_per_epoch, step % self.steps_per_epoch
        order = tf.random.experimental.stateless_shuffle(
            self._rows, seed=tf.stack([tf.constant(self._seed, tf.int64), -1 - epoch]))
        rows = order[position * self._batch_size:(position + 1) * self._batch_size]
        batch = tf.shape(rows)[0]
        batch_row, column, positive = self._dense.entries(rows)
        hidden = positive & (tf.random.stateless_uniform(
            tf.shape(positive), self._seed_for(step, 0)) < self._mask_rate)
        timesteps = tf.random.stateless_uniform((batch,), self._seed_for(step, 1), 0,
                                                self.diffusion.steps, tf.int32)
        return batch, batch_row, column, positive, hidden, timesteps

    def batch(self, step: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """(x_input, x_target, t, noise) of optimizer step `step` (int64 scalar)."""
        batch, batch_row, column, positive, hidden, timesteps = self.sample(step)
        values = self._dense.values(positive)
        x_target = self._dense.scatter(batch_row, column, values, batch)
        x_input = self._dense.scatter(batch_row, column,
                                      tf.where(hidden, self._dense.r_0, values), batch)
        noise = tf.random.stateless_normal(tf.shape(x_target), self._seed_for(step, 2))
        return x_input, x_target, timesteps, noise

    def step_loss(self, step: tf.Tensor) -> tf.Tensor:
        """float32 [batch]: the training loss of each query of step `step`."""
        x_input, x_target, timesteps, noise = self.batch(step)
        return self.diffusion.training_loss(x_input, x_target, timesteps, noise, training=True)

    def train_step(self, data):
        step = tf.cast(self.optimizer.iterations, tf.int64)
        for stream, state in enumerate(self._seed_states, start=3):
            state.assign(tf.cast(self._seed_for(step, stream), state.dtype))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self.step_loss(step))
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self._loss.update_state(loss)
        return {"loss": self._loss.result()}


class SparseBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that saves at an epoch's end only when `seconds` have passed since its
    last save: a checkpoint holds the weights and both Adam moments (12 P bytes, 185 MB at
    N = 20,000), and small epochs would otherwise write it every few seconds."""

    def __init__(self, backup_dir: str, seconds: float):
        super().__init__(backup_dir)
        self._seconds = seconds
        self._saved_at = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._saved_at >= self._seconds:
            super().on_epoch_end(epoch, logs)
            self._saved_at = time.monotonic()


def build_diffusion(model: AugmentModelConfig, items: int, seed: int,
                    denoiser_class: type[Denoiser] = Denoiser) -> GaussianDiffusion:
    denoiser = denoiser_class(model.hidden_units, model.step_embedding_dim, model.dropout,
                        model.normalize_input, residual=model.residual,
                        split_signs=model.split_signs, name="denoiser")
    diffusion = GaussianDiffusion(
        denoiser, steps=model.steps, schedule=model.schedule, noise_scale=model.noise_scale,
        noise_min=model.noise_min, noise_max=model.noise_max, reweight=model.reweight,
        sampling_steps=model.sampling_steps, seed=seed, name="diffusion")
    diffusion.build((None, items))
    return diffusion


def build_trainer(config: AugmentConfig, items: int, dense: DenseRows, rows: np.ndarray,
                  denoiser_class: type[Denoiser] = Denoiser,
                  optimizer_class: type[keras.optimizers.Adam] = FusedAdam) -> DiffusionTrainer:
    """The stage's seeded, built and compiled trainer of a diffusion over `items` columns, fit
    on `rows` of `dense`. The classes are there for benchmarks/augment_throughput.py, which
    times the step against the versions without its speed-ups."""
    keras.utils.set_random_seed(config.train.seed)
    diffusion = build_diffusion(config.model, items, config.train.seed, denoiser_class)
    trainer = DiffusionTrainer(diffusion, dense, rows, config.train.batch_size,
                               config.train.positive_mask_rate, config.train.seed)
    trainer.build((None, items))
    trainer.compile(optimizer=optimizer_class(
        config.train.learning_rate, weight_decay=config.train.weight_decay or None),
        jit_compile=False)
    return trainer


def parameter_count(model: AugmentModelConfig, items: int) -> int:
    """The denoiser's parameters (P in the qrec_tf.augment package docstring)."""
    inputs = items * (2 if model.split_signs else 1)
    widths = [inputs + model.step_embedding_dim, *model.hidden_units, items]
    dense = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    skip = 2 * items if model.residual else 0
    return dense + (model.step_embedding_dim + 1) * model.step_embedding_dim + skip


def memory_estimate_mb(config: AugmentConfig, items: int, entries: int, queries: int) -> dict:
    """The qrec_tf.augment package docstring's memory formula, in MiB."""
    mib = 2.0 ** 20
    params = parameter_count(config.model, items)
    return {"parameters": params,
            "training_state_mb": round(16 * params / mib, 1),
            "per_step_mb": round(8 * config.train.batch_size * items * 4 / mib, 1),
            "data_mb": round((13 * entries + 8 * queries) / mib, 1),
            "generation_batch": generation_batch_size(config.output, config.model.steps, items),
            "generation_batch_mb": round(
                (4 + config.model.steps) * items * 4 / mib
                * generation_batch_size(config.output, config.model.steps, items), 1)}
