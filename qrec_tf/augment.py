"""Diffusion augmentation: query-item vectors -> a trained DDPM -> the contrastive positives table.

    python -m qrec_tf.augment --data DIR --output DIR
        [--config configs/augment/default.yaml] [--verbose auto|0|1|2]
        [--set train.epochs=50 --set data.max_items=20000 ...]

docs/PAPER.md "Diffusion augmentation". Reads `<data>/query_items/` (the Beam job's table), builds
one vector per query over an item space of N items:
  x_q[i] = r_p (data.positive_value, 0.5) if i was clicked after q,
           r_n (data.negative_value, -0.5) if shown after q and never clicked,
           r_0 (data.neutral_value, 0) otherwise.
A Gaussian diffusion with an MLP denoiser (qrec_tf.layers.diffusion / denoiser, DiffRec's design)
is trained to predict the full x_q from a noised copy in which some positives were masked out
(train.positive_mask_rate), so it learns to fill in missing positives. Then every query gets a row
in the positives table: click-less queries the top-K generated items (output.top_k) excluding
their known negatives; the others their clicks, most clicked first, and with
output.augment_clicked also generated items up to K.

Departures from DiffRec's DNN, measured with the quality check below (docs/RESULTS.md): the
denoiser adds a learned per-item skip of x_t (model.residual: without it the MLP spends itself
copying the visible entries; Recall@10 0.04 -> 0.30 on a generated 2,000-user log), and reads
clicks and shown-not-clicked items as separate inputs (model.split_signs: both point to the
query's topic, which one weight per item cannot express; equal on that log, Recall@5 0.44 ->
0.69 on the tests' planted data). DiffRec's input dropout (model.dropout 0.5; 0.24 without) is
kept; SNR reweighting lowered recall (0.24) and is off.

Writes into --output:
  positives/*.tfrecord.gz   the table (qrec_tf.positives.POSITIVES_SPEC); training reads it from
                            model.positives_dir (default <data>/positives: use --output <data>)
  augment_summary.json      counts, what was left outside the item space, the quality check,
                            loss history, timings and peak memory
  augment_config.yaml       the resolved config
  diffusion.weights.h5      the trained denoiser
  checkpoints/              exists while training, saved at the end of an epoch at most every
                            train.checkpoint_seconds (60); a killed run started again resumes
                            from its last checkpoint (and ends with the table an unbroken run
                            writes)

Item space. Search logs show millions of items (KuaiSAR: 2-4M), and the model is |items| wide on
both ends, so x_q is restricted to the N = data.max_items items shown after the most distinct
queries ("most exposed"; ties: more clicks, then smaller id) that are also in the CTR model's item
vocabulary (vocab/items.txt; other items could not be used as positives). Entries and items
outside the space are counted in the summary. Memory, with E = model.step_embedding_dim,
H = model.hidden_units (h_1 .. h_k), B = train.batch_size, Z = in-space query-item pairs,
Q = queries, T = model.steps, S = 2 with model.split_signs (else 1):
  parameters   P = (S N + E) h_1 + sum_j h_j h_{j+1} + h_k N + E^2 + sum_j h_j + N + E
               (+ 2 N with model.residual); ~ (S + 1) N h_1 for one hidden layer
  training     16 P bytes (weights, gradients, Adam's two moments; float32)
               + ~8 B N float32 per step (target, input, noise, x_t, prediction, gradients)
  data         ~13 Z + 8 Q bytes (column int32, value float32, click count int32, flag) in RAM
  generation   ~(4 + T) B' N float32 per batch of B' = output.batch_size queries; only the top-K
               indices of each query are kept
With N = 20,000, H = [256], split signs: P = 15.4M -> 0.25 GB, + 0.08 GB per step (B = 128).
The summary holds this estimate and the measured peak resident memory (getrusage ru_maxrss) of
the process, which includes TensorFlow's own ~0.6 GB.

Quality check (independent of the CTR model): output.holdout_fraction of the queries with clicks
have half of their in-space clicks (at least one) hidden and are left out of training, like the
click-less queries the model fills. The check ranks items for them from what is left (excluding
the items still visible) and reports Recall@K and NDCG@K (K = output.quality_k) of the diffusion
model and of global click popularity. The table still lists every click of these queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import sys
import time
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
import yaml

from qrec_tf import positives
from qrec_tf import schema as S
from qrec_tf.config import _build, apply_overrides, read_yaml_mapping
from qrec_tf.layers.denoiser import Denoiser
from qrec_tf.layers.diffusion import SCHEDULES, GaussianDiffusion

LOG = logging.getLogger("qrec_tf.augment")
SUMMARY_FILE = "augment_summary.json"
CONFIG_FILE = "augment_config.yaml"
WEIGHTS_FILE = "diffusion.weights.h5"
CHECKPOINT_DIR = "checkpoints"


# --- configuration ---------------------------------------------------------------------------
@dataclasses.dataclass
class AugmentDataConfig:
    """How query-item vectors are built."""

    max_items: int = 20_000             # N: the item space (most exposed search items)
    positive_value: float = 0.5         # r_p: clicked after the query
    negative_value: float = -0.5        # r_n: shown after the query, never clicked
    neutral_value: float = 0.0          # r_0: everything else
    train_on_clickless: bool = False    # also fit the vectors of queries without a click

    def validate(self) -> None:
        if self.max_items < 1:
            raise ValueError("data.max_items must be >= 1")
        if not self.negative_value < self.neutral_value < self.positive_value:
            raise ValueError("need data.negative_value < data.neutral_value < data.positive_value")


@dataclasses.dataclass
class AugmentModelConfig:
    """The diffusion process and its denoiser (DiffRec's parameters)."""

    hidden_units: list[int] = dataclasses.field(default_factory=lambda: [256])
    step_embedding_dim: int = 10
    dropout: float = 0.5                # on the MLP's input (DiffRec's default)
    normalize_input: bool = False
    residual: bool = True               # x0_hat = skip * x_t + MLP (see layers.denoiser)
    split_signs: bool = True            # the MLP reads clicks and non-clicks as separate inputs
    steps: int = 5
    schedule: str = "linear-var"
    noise_scale: float = 1e-4
    noise_min: float = 5e-4
    noise_max: float = 5e-3
    reweight: bool = False
    sampling_steps: int = 0

    def validate(self) -> None:
        if not self.hidden_units or min(self.hidden_units) < 1:
            raise ValueError("model.hidden_units must be a non-empty list of positive sizes")
        if self.step_embedding_dim < 1 or self.steps < 1:
            raise ValueError("model.step_embedding_dim and model.steps must be >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"model.schedule must be one of {list(SCHEDULES)}")
        if not 0 <= self.sampling_steps <= self.steps:
            raise ValueError("model.sampling_steps must be in [0, model.steps]")
        if not 0 <= self.dropout < 1:
            raise ValueError("model.dropout must be in [0, 1)")


@dataclasses.dataclass
class AugmentTrainConfig:
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    positive_mask_rate: float = 0.5     # share of a query's positives hidden from the input
    seed: int = 0
    checkpoint_seconds: float = 60.0    # least time between two checkpoints (0: every epoch)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train.epochs and train.batch_size must be >= 1")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("train.learning_rate must be > 0 and train.weight_decay >= 0")
        if not 0 <= self.positive_mask_rate <= 1:
            raise ValueError("train.positive_mask_rate must be in [0, 1]")
        if self.checkpoint_seconds < 0:
            raise ValueError("train.checkpoint_seconds must be >= 0")


@dataclasses.dataclass
class AugmentOutputConfig:
    top_k: int = 10                     # generated positives per click-less query
    augment_clicked: bool = False       # fill queries with fewer than top_k clicks up to top_k
    holdout_fraction: float = 0.1       # queries with clicks used by the quality check
    quality_k: int = 10                 # K of Recall@K / NDCG@K
    batch_size: int = 1024              # queries per generation batch

    def validate(self) -> None:
        if min(self.top_k, self.quality_k, self.batch_size) < 1:
            raise ValueError("output.top_k, output.quality_k and output.batch_size must be >= 1")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError("output.holdout_fraction must be in [0, 1)")


SECTIONS = {"data": AugmentDataConfig, "model": AugmentModelConfig, "train": AugmentTrainConfig,
            "output": AugmentOutputConfig}


@dataclasses.dataclass
class AugmentConfig:
    data: AugmentDataConfig = dataclasses.field(default_factory=AugmentDataConfig)
    model: AugmentModelConfig = dataclasses.field(default_factory=AugmentModelConfig)
    train: AugmentTrainConfig = dataclasses.field(default_factory=AugmentTrainConfig)
    output: AugmentOutputConfig = dataclasses.field(default_factory=AugmentOutputConfig)

    def validate(self) -> "AugmentConfig":
        for section in SECTIONS:
            getattr(self, section).validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AugmentConfig":
        values = values or {}
        unknown = set(values) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown augment config section(s) {sorted(unknown)}; "
                             f"known: {list(SECTIONS)}")
        return cls(**{name: _build(kind, values.get(name) or {}, name)
                      for name, kind in SECTIONS.items()}).validate()


def load_augment_config(path: str | None = None, overrides: Iterable[str] = ()) -> AugmentConfig:
    """Defaults, then the YAML file (if any), then `section.key=value` overrides."""
    values = read_yaml_mapping(path, ", ".join(SECTIONS))
    return AugmentConfig.from_dict(apply_overrides(values, overrides))


# --- the query -> items table ----------------------------------------------------------------
@dataclasses.dataclass
class QueryItems:
    """The Beam job's query_items/ table as flat arrays; queries sorted by key.

    keys: [Q] query keys. clicked_rows / clicked_items / click_counts: [C] one entry per
    (query, clicked item). unclicked_rows / unclicked_items: [U] per (query, shown-never-clicked
    item). Rows index `keys`.
    """

    keys: list[str]
    clicked_rows: np.ndarray
    clicked_items: np.ndarray
    click_counts: np.ndarray
    unclicked_rows: np.ndarray
    unclicked_items: np.ndarray


def read_query_items(data_dir: str, batch_size: int = 4096) -> QueryItems:
    pattern = os.path.join(data_dir, S.QUERY_ITEMS_DIR, S.EXAMPLE_FILE_PATTERN)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no query table at {pattern}: is {data_dir!r} the output "
                                "directory of `python -m pipelines.build_tfrecords`?")
    keys: list[str] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (
        "clicked_rows", "clicked_items", "click_counts", "unclicked_rows", "unclicked_items")}
    dataset = tf.data.TFRecordDataset(files, compression_type=S.COMPRESSION).batch(batch_size)
    for records in dataset:
        rows = tf.io.parse_example(records, S.QUERY_ITEMS_SPEC)
        offset = len(keys)
        keys.extend(key.decode() for key in rows[S.QI_QUERY_KEY].numpy())
        for prefix, name in (("clicked", S.QI_CLICKED_ITEM_IDS),
                             ("unclicked", S.QI_UNCLICKED_ITEM_IDS)):
            sparse = rows[name]
            parts[f"{prefix}_rows"].append(sparse.indices[:, 0].numpy() + offset)
            parts[f"{prefix}_items"].append(sparse.values.numpy())
        counts = rows[S.QI_CLICK_COUNTS]
        parts["click_counts"].append(counts.values.numpy())
    flat = {name: np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
            for name, arrays in parts.items()}
    if len(flat["click_counts"]) != len(flat["clicked_items"]):
        raise ValueError(f"{pattern}: click counts and clicked items differ in length")
    # Sort queries by key, so row order (and with it every random draw) is independent of sharding.
    order = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    new_row = np.empty(len(keys), np.int64)
    new_row[order] = np.arange(len(keys))
    return QueryItems(
        keys=[keys[i] for i in order],
        clicked_rows=new_row[flat["clicked_rows"]], clicked_items=flat["clicked_items"],
        click_counts=flat["click_counts"],
        unclicked_rows=new_row[flat["unclicked_rows"]], unclicked_items=flat["unclicked_items"])


@dataclasses.dataclass
class ItemSpace:
    """The N items of the query-item vectors; column j of x_q is item_ids[j]."""

    item_ids: np.ndarray                # int64 [N], most exposed first
    report: dict

    def columns(self, items: np.ndarray) -> np.ndarray:
        """Column of each item id, -1 for items outside the space."""
        if not len(self.item_ids):
            return np.full(len(items), -1)
        order = np.argsort(self.item_ids)
        position = np.searchsorted(self.item_ids[order], items)
        position = np.minimum(position, len(order) - 1)
        found = self.item_ids[order][position] == items
        return np.where(found, order[position], -1)


def choose_item_space(table: QueryItems, vocabulary: np.ndarray, max_items: int) -> ItemSpace:
    """The `max_items` search items shown after the most distinct queries, among `vocabulary`
    (the CTR model's item ids); ties: more clicks, then smaller id."""
    shown = np.concatenate([table.clicked_items, table.unclicked_items])
    items, exposure = np.unique(shown, return_counts=True)
    clicks = np.zeros(len(items), np.int64)
    np.add.at(clicks, np.searchsorted(items, table.clicked_items), table.click_counts)
    known = np.isin(items, vocabulary)
    candidates = np.flatnonzero(known)
    ranked = candidates[np.lexsort((items[candidates], -clicks[candidates],
                                    -exposure[candidates]))]
    chosen = ranked[:max_items]
    space = ItemSpace(items[chosen], {})
    inside = np.zeros(len(items), bool)
    inside[chosen] = True
    clicked_inside = space.columns(table.clicked_items) >= 0
    unclicked_inside = space.columns(table.unclicked_items) >= 0
    space.report = {
        "search_items": int(len(items)),
        "items_in_space": int(len(chosen)),
        "items_outside_item_vocabulary": int((~known).sum()),
        "items_outside_cap": int((known & ~inside).sum()),
        "clicked_pairs_outside": int((~clicked_inside).sum()),
        "clicks_outside": int(table.click_counts[~clicked_inside].sum()),
        "unclicked_pairs_outside": int((~unclicked_inside).sum()),
        "share_of_clicks_inside": round(
            float(table.click_counts[clicked_inside].sum() / max(1, table.click_counts.sum())),
            4),
    }
    return space


# --- the query x item matrix -----------------------------------------------------------------
@dataclasses.dataclass
class QueryItemMatrix:
    """x_q for every query as CSR rows over the item space (entries sorted by column).

    row_splits int64 [Q + 1]; columns int32 [Z]; positive bool [Z] (clicked, else shown and never
    clicked); click_counts int32 [Z] (0 for negatives). Absent entries are r_0.
    """

    row_splits: np.ndarray
    columns: np.ndarray
    positive: np.ndarray
    click_counts: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.row_splits) - 1

    def row_of_entries(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows), np.diff(self.row_splits))

    def positives_per_row(self) -> np.ndarray:
        return np.bincount(self.row_of_entries()[self.positive], minlength=self.rows)

    def entries_per_row(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def without(self, drop: np.ndarray) -> "QueryItemMatrix":
        """The matrix without the entries where `drop` (bool [Z]) is set."""
        keep = ~drop
        rows = self.row_of_entries()[keep]
        splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.rows))])
        return QueryItemMatrix(splits.astype(np.int64), self.columns[keep], self.positive[keep],
                               self.click_counts[keep])


def build_matrix(table: QueryItems, space: ItemSpace) -> QueryItemMatrix:
    rows = np.concatenate([table.clicked_rows, table.unclicked_rows])
    columns = space.columns(np.concatenate([table.clicked_items, table.unclicked_items]))
    positive = np.arange(len(rows)) < len(table.clicked_rows)
    counts = np.concatenate([table.click_counts, np.zeros(len(table.unclicked_rows), np.int64)])
    inside = columns >= 0
    rows, columns = rows[inside], columns[inside]
    positive, counts = positive[inside], counts[inside]
    order = np.lexsort((columns, rows))
    splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(table.keys)))])
    return QueryItemMatrix(splits.astype(np.int64), columns[order].astype(np.int32),
                           positive[order], counts[order].astype(np.int32))


def hold_out(matrix: QueryItemMatrix, fraction: float, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Picks `fraction` of the rows with positives and, in each, half of its positives (at least
    one). Returns (held-out rows sorted, bool [Z] held-out entries)."""
    with_positives = np.flatnonzero(matrix.positives_per_row() > 0)
    count = int(round(fraction * len(with_positives)))
    rows = np.sort(rng.choice(with_positives, count, replace=False)) if count else \
        np.zeros(0, np.int64)
    held = np.zeros(len(matrix.columns), bool)
    for row in rows:
        entries = np.arange(matrix.row_splits[row], matrix.row_splits[row + 1])
        entries = entries[matrix.positive[entries]]
        held[rng.choice(entries, max(1, len(entries) // 2), replace=False)] = True
    return rows, held


class _Dense:
    """Turns CSR rows into dense [batch, N] x_q tensors inside a tf.function."""

    def __init__(self, matrix: QueryItemMatrix, items: int, values: AugmentDataConfig):
        self.items = items
        self.row_splits = tf.constant(matrix.row_splits)
        self.columns = tf.constant(matrix.columns)
        self.positive = tf.constant(matrix.positive)
        self.r_p, self.r_n, self.r_0 = (values.positive_value, values.negative_value,
                                        values.neutral_value)

    def entries(self, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(row in batch, column, positive) of every entry of `rows`."""
        ragged = tf.RaggedTensor.from_row_splits(tf.range(tf.shape(self.columns)[0]),
                                                 self.row_splits)
        picked = tf.gather(ragged, rows)
        index = picked.flat_values
        return (tf.cast(picked.value_rowids(), tf.int32), tf.gather(self.columns, index),
                tf.gather(self.positive, index))

    def scatter(self, batch_row: tf.Tensor, column: tf.Tensor, value: tf.Tensor, batch: tf.Tensor,
                ) -> tf.Tensor:
        """[batch, N] with r_0 everywhere but the given entries."""
        indices = tf.stack([batch_row, column], axis=1)
        return self.r_0 + tf.scatter_nd(indices, value - self.r_0,
                                        tf.stack([batch, tf.constant(self.items)]))

    def values(self, positive: tf.Tensor) -> tf.Tensor:
        return tf.where(positive, self.r_p, self.r_n)


# --- training --------------------------------------------------------------------------------
class DiffusionTrainer(keras.Model):
    """Fits a GaussianDiffusion to query vectors with positives masked out of its input.

    All randomness of a training step (the epoch's shuffle, the masks, t, the noise) is a
    stateless function of (seed, optimizer step), and the optimizer step is part of the
    checkpoint: a resumed run takes exactly the steps an unbroken run would. The `fit` input is
    only a step counter (tf.data.Dataset.range(steps_per_epoch)).
    """

    def __init__(self, diffusion: GaussianDiffusion, dense: _Dense, rows: np.ndarray,
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

    def batch(self, step: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """(x_input, x_target, t, noise) of optimizer step `step` (int64 scalar)."""
        epoch, position = step // self.steps_per_epoch, step % self.steps_per_epoch
        order = tf.random.experimental.stateless_shuffle(
            self._rows, seed=tf.stack([tf.constant(self._seed, tf.int64), -1 - epoch]))
        rows = order[position * self._batch_size:(position + 1) * self._batch_size]
        batch = tf.shape(rows)[0]
        batch_row, column, positive = self._dense.entries(rows)
        hidden = positive & (tf.random.stateless_uniform(
            tf.shape(positive), self._seed_for(step, 0)) < self._mask_rate)
        values = self._dense.values(positive)
        x_target = self._dense.scatter(batch_row, column, values, batch)
        x_input = self._dense.scatter(batch_row, column,
                                      tf.where(hidden, self._dense.r_0, values), batch)
        timesteps = tf.random.stateless_uniform((batch,), self._seed_for(step, 1), 0,
                                                self.diffusion.steps, tf.int32)
        noise = tf.random.stateless_normal(tf.shape(x_target), self._seed_for(step, 2))
        return x_input, x_target, timesteps, noise

    def train_step(self, data):
        step = tf.cast(self.optimizer.iterations, tf.int64)
        for stream, state in enumerate(self._seed_states, start=3):
            state.assign(tf.cast(self._seed_for(step, stream), state.dtype))
        x_input, x_target, timesteps, noise = self.batch(step)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self.diffusion.training_loss(x_input, x_target, timesteps,
                                                               noise, training=True))
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self._loss.update_state(loss)
        return {"loss": self._loss.result()}


class _SparseBackup(keras.callbacks.BackupAndRestore):
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


def build_diffusion(model: AugmentModelConfig, items: int, seed: int) -> GaussianDiffusion:
    denoiser = Denoiser(model.hidden_units, model.step_embedding_dim, model.dropout,
                        model.normalize_input, residual=model.residual,
                        split_signs=model.split_signs, name="denoiser")
    diffusion = GaussianDiffusion(
        denoiser, steps=model.steps, schedule=model.schedule, noise_scale=model.noise_scale,
        noise_min=model.noise_min, noise_max=model.noise_max, reweight=model.reweight,
        sampling_steps=model.sampling_steps, seed=seed, name="diffusion")
    diffusion.build((None, items))
    return diffusion


def parameter_count(model: AugmentModelConfig, items: int) -> int:
    """The denoiser's parameters (the module docstring's P)."""
    inputs = items * (2 if model.split_signs else 1)
    widths = [inputs + model.step_embedding_dim, *model.hidden_units, items]
    dense = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    skip = 2 * items if model.residual else 0
    return dense + (model.step_embedding_dim + 1) * model.step_embedding_dim + skip


def memory_estimate_mb(config: AugmentConfig, items: int, entries: int, queries: int) -> dict:
    """The module docstring's formula, in MiB."""
    mib = 2.0 ** 20
    params = parameter_count(config.model, items)
    return {"parameters": params,
            "training_state_mb": round(16 * params / mib, 1),
            "per_step_mb": round(8 * config.train.batch_size * items * 4 / mib, 1),
            "data_mb": round((13 * entries + 8 * queries) / mib, 1),
            "generation_batch_mb": round(
                (4 + config.model.steps) * config.output.batch_size * items * 4 / mib, 1)}


# --- generation and ranking ------------------------------------------------------------------
def rank_items(diffusion: GaussianDiffusion, dense: _Dense, rows: np.ndarray, k: int,
               exclude_positives: bool, batch_size: int, seed: int,
               progress: keras.utils.Progbar | None = None) -> np.ndarray:
    """int [len(rows), k] item-space columns, best first: the denoised x_q of each row, without
    its negatives (and positives, if exclude_positives); -1 where fewer than k are left."""
    k = min(k, dense.items)

    @tf.function(reduce_retracing=True)
    def top_k(batch_rows: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(batch_rows)[0]
        batch_row, column, positive = dense.entries(batch_rows)
        x = dense.scatter(batch_row, column, dense.values(positive), batch)
        noise = tf.random.stateless_normal(tf.shape(x), tf.stack(
            [tf.constant(seed, tf.int64), -1 - step]))
        scores = diffusion.denoise(x, noise)
        excluded = ~positive | exclude_positives
        blocked = tf.scatter_nd(tf.stack([batch_row, column], axis=1),
                                tf.cast(excluded, tf.float32), tf.shape(scores)) > 0
        scores = tf.where(blocked, -np.inf, scores)
        values, indices = tf.math.top_k(scores, k)
        return tf.where(tf.math.is_inf(values), -1, indices)

    out = np.full((len(rows), k), -1, np.int32)
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        out[start:stop] = top_k(tf.constant(rows[start:stop], tf.int64),
                                tf.constant(start, tf.int64)).numpy()
        if progress is not None:
            progress.add(stop - start)
    return out


def ranking_quality(ranked: np.ndarray, targets: Sequence[np.ndarray], k: int) -> dict:
    """Mean Recall@k (hits / |targets|) and NDCG@k (binary gains) over queries.

    ranked: int [queries, >= k] item columns, best first (-1 = none); targets: per query the
    held-out item columns.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, target in zip(ranked[:, :k], targets):
        hits = np.isin(row, target) & (row >= 0)
        recalls.append(hits.sum() / len(target))
        ndcgs.append((hits * discounts).sum() / discounts[:min(len(target), k)].sum())
    return {"recall": round(float(np.mean(recalls)), 4) if recalls else None,
            "ndcg": round(float(np.mean(ndcgs)), 4) if ndcgs else None}


def popularity_ranking(matrix: QueryItemMatrix, rows: np.ndarray, k: int) -> np.ndarray:
    """Items by total clicks in `matrix` (ties: column order), without each row's own entries."""
    clicks = np.bincount(matrix.columns, weights=matrix.click_counts, minlength=0)
    order = np.lexsort((np.arange(len(clicks)), -clicks))
    out = np.full((len(rows), k), -1, np.int32)
    for i, row in enumerate(rows):
        seen = matrix.columns[matrix.row_splits[row]:matrix.row_splits[row + 1]]
        ranked = order[~np.isin(order, seen)][:k]
        out[i, :len(ranked)] = ranked
    return out


def quality_check(diffusion: GaussianDiffusion, train_dense: _Dense, train_matrix: QueryItemMatrix,
                  full: QueryItemMatrix, held_rows: np.ndarray, held: np.ndarray,
                  config: AugmentConfig) -> dict:
    """Recall@K / NDCG@K of diffusion and popularity on the held-out clicks."""
    k = config.output.quality_k
    entry_rows = full.row_of_entries()
    targets = [full.columns[held & (entry_rows == row)] for row in held_rows]
    result = {"k": k, "queries": int(len(held_rows)), "held_out_clicks": int(held.sum())}
    if not len(held_rows):
        return {**result, "diffusion": None, "popularity": None}
    ranked = rank_items(diffusion, train_dense, held_rows, k, True, config.output.batch_size,
                        config.train.seed + 1)
    return {**result, "diffusion": ranking_quality(ranked, targets, k),
            "popularity": ranking_quality(popularity_ranking(train_matrix, held_rows, k),
                                          targets, k)}


# --- the positives table ---------------------------------------------------------------------
def positives_table(table: QueryItems, space: ItemSpace, generated: dict[int, np.ndarray],
                    top_k: int) -> dict[str, list[int]]:
    """query key -> item ids: clicks (most clicked first, ties: smaller id), then the query's
    generated items (item-space columns, -1 = none) until top_k; a query that is not in
    `generated` keeps only its clicks."""
    order = np.lexsort((table.clicked_items, -table.click_counts, table.clicked_rows))
    splits = np.searchsorted(table.clicked_rows[order], np.arange(len(table.keys) + 1))
    clicked = table.clicked_items[order]
    result = {}
    for row, key in enumerate(table.keys):
        items = clicked[splits[row]:splits[row + 1]].tolist()
        if row in generated:
            extra = [int(space.item_ids[c]) for c in generated[row] if c >= 0]
            items += extra[:max(0, top_k - len(items))]
        result[key] = items
    return result


# --- the stage -------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def run(config: AugmentConfig, data_dir: str, output_dir: str, verbose="auto",
        extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Runs the stage; returns what augment_summary.json holds."""
    started = time.perf_counter()
    table = read_query_items(data_dir)
    vocabulary = np.array([int(value) for value, _ in S.read_vocab(data_dir, S.VOCAB_ITEMS)],
                          np.int64)
    space = choose_item_space(table, vocabulary, config.data.max_items)
    if not len(space.item_ids):
        raise ValueError(f"no item of {data_dir}/{S.QUERY_ITEMS_DIR}/ is in the item vocabulary: "
                         "nothing to train on")
    items = len(space.item_ids)
    full = build_matrix(table, space)
    clicked = full.positives_per_row() > 0
    has_clicks = np.bincount(table.clicked_rows, minlength=len(table.keys)) > 0
    rng = np.random.default_rng(config.train.seed)
    held_rows, held = hold_out(full, config.output.holdout_fraction, rng)
    train_matrix = full.without(held)
    wanted = train_matrix.entries_per_row() > 0
    # Held-out queries stay out of training, like the click-less queries the model fills:
    # trained on, their hidden clicks would be taught as "not a positive" for that very input.
    wanted[held_rows] = False
    if not config.data.train_on_clickless:
        wanted &= train_matrix.positives_per_row() > 0
    train_rows = np.flatnonzero(wanted)
    if not len(train_rows):
        raise ValueError("no query has a clicked item inside the item space: nothing to train on "
                         "(raise data.max_items, or set data.train_on_clickless=true)")
    LOG.info("%d queries (%d with clicks), item space %d of %d search items; training on %d "
             "queries, %d held out for the quality check", len(table.keys), int(has_clicks.sum()),
             items, space.report["search_items"], len(train_rows), len(held_rows))

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    keras.utils.set_random_seed(config.train.seed)
    diffusion = build_diffusion(config.model, items, config.train.seed)
    train_dense = _Dense(train_matrix, items, config.data)
    trainer = DiffusionTrainer(diffusion, train_dense, train_rows, config.train.batch_size,
                               config.train.positive_mask_rate, config.train.seed)
    trainer.build((None, items))
    trainer.compile(optimizer=keras.optimizers.Adam(
        config.train.learning_rate, weight_decay=config.train.weight_decay or None),
        jit_compile=False)
    trained = time.perf_counter()
    history = trainer.fit(
        tf.data.Dataset.range(trainer.steps_per_epoch), epochs=config.train.epochs,
        callbacks=[_SparseBackup(os.path.join(output_dir, CHECKPOINT_DIR),
                                 config.train.checkpoint_seconds), *extra_callbacks],
        shuffle=False, verbose=verbose)
    train_seconds = time.perf_counter() - trained
    trainer.save_weights(os.path.join(output_dir, WEIGHTS_FILE))

    quality = quality_check(diffusion, train_dense, train_matrix, full, held_rows, held, config)
    LOG.info("quality check on %d held-out queries: diffusion %s, popularity %s",
             quality["queries"], quality["diffusion"], quality["popularity"])

    to_generate = np.flatnonzero(~has_clicks | (config.output.augment_clicked & has_clicks
                                                & (np.bincount(table.clicked_rows,
                                                               minlength=len(table.keys))
                                                   < config.output.top_k)))
    generating = time.perf_counter()
    progress = keras.utils.Progbar(len(to_generate), unit_name="query",
                                   verbose=0 if verbose == 0 else 1)
    ranked = rank_items(diffusion, _Dense(full, items, config.data), to_generate,
                        config.output.top_k, True, config.output.batch_size, config.train.seed,
                        progress if len(to_generate) else None)
    generate_seconds = time.perf_counter() - generating
    generated = dict(zip(to_generate.tolist(), ranked))
    filled = positives_table(table, space, generated, config.output.top_k)
    positives.write(filled, output_dir)

    sizes = np.array([len(v) for v in filled.values()])
    empty_input = full.entries_per_row() == 0
    summary = {
        "data_dir": os.path.abspath(data_dir),
        "positives_dir": os.path.abspath(os.path.join(output_dir, positives.POSITIVES_DIR)),
        "queries": {
            "total": len(table.keys),
            "with_clicks": int(has_clicks.sum()),
            "clickless": int((~has_clicks).sum()),
            "clickless_filled": int(sum(1 for r in to_generate if not has_clicks[r]
                                        and (generated[r] >= 0).any())),
            "clickless_without_items_in_space": int((~has_clicks & empty_input).sum()),
            "clicked_augmented": int(sum(1 for r in to_generate if has_clicks[r])),
            "with_clicks_only_outside_space": int((has_clicks & ~clicked).sum()),
            "trained_on": int(len(train_rows)),
            "held_out": int(len(held_rows)),
            "positives_per_query": {"mean": round(float(sizes.mean()), 3) if len(sizes) else 0,
                                    "empty": int((sizes == 0).sum())},
        },
        "item_space": space.report,
        "quality": quality,
        "training": {"epochs_run": len(history.history.get("loss", [])),
                     "steps_per_epoch": trainer.steps_per_epoch,
                     "loss": [float(v) for v in history.history.get("loss", [])],
                     "seconds": round(train_seconds, 2)},
        "generation_seconds": round(generate_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "memory": {"estimate": memory_estimate_mb(config, items, len(full.columns),
                                                  len(table.keys)),
                   "peak_rss_mb": _peak_rss_mb()},
        "config": config.to_dict(),
    }
    with open(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.augment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output directory of the Beam job")
    parser.add_argument("--output", required=True,
                        help="receives positives/, the summary and checkpoints (use the --data "
                             "directory for the default model.positives_dir)")
    parser.add_argument("--config", default=None, help="YAML with data/model/train/output "
                                                       "sections (defaults otherwise)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. train.epochs=50")
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_augment_config(args.config, args.set)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = run(config, args.data, args.output,
                      args.verbose if args.verbose == "auto" else int(args.verbose))
    except (FileNotFoundError, ValueError, OSError) as error:
        parser.error(str(error))
    quality = summary["quality"]
    print(f"positives for {summary['queries']['total']} queries "
          f"({summary['queries']['clickless_filled']} click-less filled) in "
          f"{summary['positives_dir']}; Recall@{quality['k']} diffusion "
          f"{(quality['diffusion'] or {}).get('recall')} vs popularity "
          f"{(quality['popularity'] or {}).get('recall')}; peak memory "
          f"{summary['memory']['peak_rss_mb']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
