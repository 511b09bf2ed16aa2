"""The augment stage's configuration: data / model / train / output sections, loaded from YAML
(configs/augment/default.yaml) with `section.key=value` overrides, as strict as the CTR configs."""

from __future__ import annotations

import dataclasses
from typing import Iterable

from qrec_tf.config import _build, apply_overrides, read_yaml_mapping
from qrec_tf.layers.diffusion import SCHEDULES


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
    # Latent diffusion (L-DiffRec): items split into groups by first-level category (by k-means
    # on latent_item_embeddings, else hashed, into latent_hash_groups groups when an item has
    # none), each group's slice of x_q encoded
    # to latent_dim units; the diffusion runs in the concatenated latent space and per-group
    # decoders score the items. No item cap (data.max_items is not used): see
    # qrec_tf/augment/latent.py for its memory.
    latent: bool = False
    latent_dim: int = 16                # latent units per group
    latent_hash_groups: int = 16        # groups of the items without a category
    # Group by first-level (1) or second-level (2) categories: finer groups give each latent
    # unit fewer items (measured at 200k and 2M items: docs/RESULTS.md).
    latent_category_level: int = 1
    # A trained CTR model (`python -m qrec_tf.train --model-dir`): the items without a category
    # are grouped by k-means on its item embeddings (latent_hash_groups clusters); the items it
    # does not know are still hashed. Empty: hashing only.
    latent_item_embeddings: str = ""

    def validate(self) -> None:
        if self.latent_dim < 1 or self.latent_hash_groups < 1:
            raise ValueError("model.latent_dim and model.latent_hash_groups must be >= 1")
        if self.latent_category_level not in (1, 2):
            raise ValueError("model.latent_category_level must be 1 (first-level categories) "
                             "or 2 (second-level)")
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
    # Train and run the quality check even when no query needs filling (no click-less query and
    # output.augment_clicked off); otherwise such a run writes the log's positives untrained.
    force: bool = False

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
    batch_size: int = 1024              # queries per generation batch, at most
    batch_memory_mb: float = 1024.0     # ... and fewer when its [batch, N] buffers need more


    def validate(self) -> None:
        if min(self.top_k, self.quality_k, self.batch_size) < 1:
            raise ValueError("output.top_k, output.quality_k and output.batch_size must be >= 1")
        if self.batch_memory_mb <= 0:
            raise ValueError("output.batch_memory_mb must be > 0")
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
