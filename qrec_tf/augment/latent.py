"""Latent diffusion for large item spaces (`model.latent: true`; L-DiffRec, Wang et al. SIGIR
2023): the model, its trainer, its scores for generation, its size and memory.

The items are split into C groups (qrec_tf.augment.grouping: first-level categories; for items
without one, k-means on a CTR model's item embeddings or hashing). A query's vector is encoded
group by group (GroupEncoder: its entries only, never [batch, N]) into L = C d latent units
(d = model.latent_dim); the diffusion and its MLP denoiser (the dense path's, residual skip
included, on L instead of N inputs) run there; a linear decoder per group (GroupDecoder) maps
the denoised latent back to item scores. The loss
is the dense path's squared error over all N items against x_q, summed instead of averaged (so
that the gradients do not shrink below Adam's epsilon as N grows), computed from the
entries and the decoders' Gram matrices (GroupDecoder.squared_sum), so a training step holds no
[batch, N] tensor and the item space needs no cap (data.max_items is not used).

Memory, with N items, C groups, d = model.latent_dim, L = C d, S = 2 with model.split_signs
(else 1), P_den = the denoiser's parameters on L inputs (the package docstring's P with N = L
and S = 1), B = train.batch_size, Z = in-space query-item pairs, Q = queries:
  parameters   P = S N d + C d (encoders) + N d + N (decoders) + 2 N (skip, model.residual)
                   + P_den;  ~ (S + 1) N d
  training     12 P bytes (weights, Adam's two moments; float32)
               + 4 (N d + N + P_den) bytes of dense gradients (decoders, denoiser; the
               encoders' and the skip's gradients are their batch's rows only: sparse, and
               Adam updates only those rows, qrec_tf.optimizers.LazyAdam)
               + ~3 x 4 N d bytes a step (the decoder kernel's per-group slices for the Gram
               matrices, their gradients and its assembled gradient)
  data         ~13 Z + 8 Q bytes, as the dense path
  generation   ~4 N float32 per query of a batch (scores in group order, in column order, the
               exclusion of the query's items, top-k's input): output.batch_size, lowered to
               fit output.batch_memory_mb (1 GiB; 16 queries at N = 2M)
At N = 2M, d = 16, split signs, 8 groups, H = [256]: P = 102M -> 1.2 GB training state,
+ 0.14 GB gradients + 0.4 GB a step; the step's compute is ~6 N d^2 flops for the Gram
matrices (and their gradients) and O(B L h) for the denoiser, instead of the dense path's
~6 B N h.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from qrec_tf.augment.config import AugmentConfig, AugmentModelConfig
from qrec_tf.augment.generation import ItemScores, batch_size_for
from qrec_tf.augment.grouping import ItemGroups
from qrec_tf.augment.training import DiffusionTrainer, parameter_count
from qrec_tf.augment.vectors import DenseRows
from qrec_tf.layers.denoiser import Denoiser
from qrec_tf.layers.diffusion import GaussianDiffusion
from qrec_tf.layers.group_decoder import GroupDecoder
from qrec_tf.layers.group_encoder import GroupEncoder
from qrec_tf.layers.latent_diffusion import LatentDiffusion
from qrec_tf.optimizers import FusedAdam, LazyAdam


class FusedLazyAdam(FusedAdam, LazyAdam):
    """Adam with FusedAdam's one-kernel dense update and LazyAdam's row update for sparse
    gradients (the encoders' and the skip's: only the rows of the batch's items)."""


class LatentDiffusionTrainer(DiffusionTrainer):
    """DiffusionTrainer of a LatentDiffusion: the same stateless draws per (seed, step) (shuffle,
    masks, t; the noise is [batch, L]), so it is deterministic and resumes like the dense one.

    row_of_column: int [N] each item-space column's row in group order (ItemGroups).
    """

    def __init__(self, model: LatentDiffusion, dense: DenseRows, rows: np.ndarray,
                 row_of_column: np.ndarray, batch_size: int, positive_mask_rate: float,
                 seed: int, **kwargs):
        super().__init__(model, dense, rows, batch_size, positive_mask_rate, seed, **kwargs)
        self._row_of_column = tf.constant(row_of_column, tf.int32)

    def build(self, x_shape: tuple | None = None) -> None:
        """The model's weights exist from its construction."""

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        raise NotImplementedError("LatentDiffusionTrainer is only fit; score with "
                                  "latent_item_scores")

    def step_loss(self, step: tf.Tensor) -> tf.Tensor:
        batch, batch_row, column, positive, hidden, timesteps = self.sample(step)
        target = self._dense.values(positive) - self._dense.r_0
        noise = tf.random.stateless_normal(tf.stack([batch, self.diffusion.latent_width]),
                                           self._seed_for(step, 2))
        return self.diffusion.training_loss(
            batch_row, tf.gather(self._row_of_column, column), tf.where(hidden, 0.0, target),
            target, batch, timesteps, noise, training=True)


def build_latent_diffusion(model: AugmentModelConfig, group_sizes: list[int], seed: int
                           ) -> LatentDiffusion:
    """The latent model: model.dropout on the encoders' input entries, model.split_signs in
    the encoders, the dense path's denoiser on the L latent units (residual as configured)."""
    encoder = GroupEncoder(group_sizes, model.latent_dim, split_signs=model.split_signs,
                           dropout=model.dropout, name="encoder")
    denoiser = Denoiser(model.hidden_units, model.step_embedding_dim, 0.0, model.normalize_input,
                        residual=model.residual, name="denoiser")
    diffusion = GaussianDiffusion(
        denoiser, steps=model.steps, schedule=model.schedule, noise_scale=model.noise_scale,
        noise_min=model.noise_min, noise_max=model.noise_max, reweight=model.reweight,
        sampling_steps=model.sampling_steps, seed=seed, name="diffusion")
    decoder = GroupDecoder(group_sizes, model.latent_dim, name="decoder")
    return LatentDiffusion(encoder, diffusion, decoder, residual=model.residual,
                           name="latent_diffusion")


def build_latent_trainer(config: AugmentConfig, groups: ItemGroups, dense: DenseRows,
                         rows: np.ndarray) -> LatentDiffusionTrainer:
    """The stage's seeded and compiled latent trainer, fit on `rows` of `dense`."""
    keras.utils.set_random_seed(config.train.seed)
    model = build_latent_diffusion(config.model, groups.sizes, config.train.seed)
    trainer = LatentDiffusionTrainer(model, dense, rows, groups.row_of_column,
                                     config.train.batch_size, config.train.positive_mask_rate,
                                     config.train.seed)
    trainer.build()
    trainer.compile(optimizer=FusedLazyAdam(
        config.train.learning_rate, weight_decay=config.train.weight_decay or None),
        jit_compile=False)
    return trainer


def latent_item_scores(model: LatentDiffusion, dense: DenseRows, row_of_column: np.ndarray
                       ) -> ItemScores:
    """generation.ItemScores of the latent model, in item-space column order."""
    row_of = tf.constant(row_of_column, tf.int32)

    def scores(batch_row: tf.Tensor, column: tf.Tensor, positive: tf.Tensor, batch: tf.Tensor,
               noise_seed: tf.Tensor) -> tf.Tensor:
        noise = None
        if model.diffusion.sampling_steps > 0:
            noise = tf.random.stateless_normal(tf.stack([batch, model.latent_width]), noise_seed)
        by_row = model.item_scores(batch_row, tf.gather(row_of, column),
                                   dense.values(positive) - dense.r_0, batch, noise)
        return tf.gather(by_row, row_of, axis=1)

    return scores


def latent_generation_batch_size(config: AugmentConfig, items: int) -> int:
    """Queries per generation batch: ~4 N float32 per query (module docstring)."""
    return batch_size_for(config.output, 4 * items * 4)


def latent_parameter_count(model: AugmentModelConfig, items: int, groups: int) -> dict:
    """The latent model's parameters by part (P in the module docstring)."""
    d, signs = model.latent_dim, 2 if model.split_signs else 1
    denoiser = parameter_count(dataclasses.replace(model, split_signs=False), groups * d)
    return {"encoders": signs * items * d + groups * d, "decoders": items * d + items,
            "skip": 2 * items if model.residual else 0, "denoiser": denoiser}


def latent_memory_estimate_mb(config: AugmentConfig, items: int, groups: int, entries: int,
                              queries: int) -> dict:
    """The module docstring's memory formula, in MiB."""
    mib = 2.0 ** 20
    parts = latent_parameter_count(config.model, items, groups)
    params = sum(parts.values())
    d = config.model.latent_dim
    batch = latent_generation_batch_size(config, items)
    return {"parameters": params, "parameters_by_part": parts,
            "latent_width": groups * d,
            "training_state_mb": round(
                (12 * params + 4 * (items * d + items + parts["denoiser"])) / mib, 1),
            "per_step_mb": round(3 * 4 * items * d / mib, 1),
            "data_mb": round((13 * entries + 8 * queries) / mib, 1),
            "generation_batch": batch,
            "generation_batch_mb": round(4 * items * 4 * batch / mib, 1)}
