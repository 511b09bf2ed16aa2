"""PLE (Tang et al., RecSys 2020) baseline of table 4: the feed click and the search click as two
tasks sharing experts.

Input of both tasks, as DIN's without the queries: [e_u || e_xu || author || target item ||
v_b] with v_b the feed history pooled by target attention (eq 1). `model.ple.levels` extraction
levels (`ExtractionLevel`: per task `task_experts` experts, `shared_experts` shared ones, gates)
feed one tower per task (`mlp_units` -> Dense(1)).

Training reads the feed train examples mixed with the search examples of the users' training
periods (`build_tfrecords --search-examples`, `data.make_multitask_dataset`); the `domain`
feature says which task an example belongs to, and each task's loss is the mean binary
cross-entropy over its own examples only: L = L_feed + ple.search_task_weight * L_search. AUC,
validation, evaluation and serving use the feed tower only.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import keras
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig, check_ranges
from qrec_tf.layers.dense_stack import mlp
from qrec_tf.layers.extraction import ExtractionLevel
from qrec_tf.models.base import CTRModel, Vocabularies

TASKS = ("feed", "search")


@dataclasses.dataclass
class PLEConfig:
    """model.ple: extraction levels, experts per task and shared, each expert's Dense units; the
    search click task's loss weight (the feed click task has weight 1; towers are mlp_units)."""

    levels: int = 2
    task_experts: int = 1
    shared_experts: int = 1
    expert_units: list[int] = dataclasses.field(default_factory=lambda: [64])
    search_task_weight: float = 1.0

    def validate(self, model: ModelConfig) -> None:
        check_ranges(self, "ple", ("levels", "task_experts", "shared_experts"),
                     ("search_task_weight",))


class PLEModel(CTRModel):
    trains_on_search_examples = True

    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 **kwargs):
        super().__init__(config, schema, vocabularies, **kwargs)
        self.history_attention = self.din_attention("history_attention")
        self.levels = [ExtractionLevel(len(TASKS), config.ple.task_experts,
                                       config.ple.shared_experts, config.ple.expert_units,
                                       dropout=config.dropout,
                                       shared_output=level < config.ple.levels - 1,
                                       name=f"extraction{level}")
                       for level in range(config.ple.levels)]
        self.towers = [mlp(config.mlp_units, config.mlp_activation, config.dropout,
                           f"{task}_tower") for task in TASKS]
        self.task_logits = [keras.layers.Dense(1, dtype="float32", name=f"{task}_logit")
                            for task in TASKS]

    def aux_loss_names(self):
        return ("search_ctr_loss",)

    def forward(self, features: Mapping[str, tf.Tensor], training: bool = False) -> dict:
        _, target, hist_idx, history = self.target_and_history(features)
        v_b = self.history_attention(target, history, hist_idx != 0, training=training)
        x = tf.concat([*self.context_embeddings(features), target, v_b], axis=-1)
        task_inputs, shared = [x] * len(TASKS), x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared, training=training)
        feed, search = (tf.squeeze(logit(tower(h, training=training)), -1)
                        for h, tower, logit in zip(task_inputs, self.towers, self.task_logits))
        return {"logits": feed, "search_logits": search}

    def compute_loss_terms(self, features, labels, training):
        """Each task's loss over its own examples; metrics see the feed examples only."""
        out = self.forward(features, training=training)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
        # Without a domain feature (a batch built by hand, say) every example is a feed one.
        domain = features.get(S.DOMAIN)
        is_search = (tf.zeros_like(labels, tf.bool) if domain is None
                     else tf.reshape(domain, [-1]) == S.SEARCH_DOMAIN)
        is_feed = tf.logical_not(is_search)
        feed_labels = tf.boolean_mask(labels, is_feed)
        feed_logits = tf.boolean_mask(tf.cast(out["logits"], tf.float32), is_feed)
        terms = {"ctr_loss": self._mean_bce(feed_labels, feed_logits)}
        terms["loss"] = terms["ctr_loss"]
        if training:
            terms["search_ctr_loss"] = self._mean_bce(
                tf.boolean_mask(labels, is_search),
                tf.boolean_mask(tf.cast(out["search_logits"], tf.float32), is_search))
            terms["loss"] = terms["loss"] + self.config.ple.search_task_weight * terms[
                "search_ctr_loss"]
        return terms, feed_labels, tf.sigmoid(feed_logits)

    @staticmethod
    def _mean_bce(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Mean binary cross-entropy over [n] examples; 0.0 when n = 0 (a batch without that
        task's examples)."""
        total = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
        return total / tf.maximum(tf.cast(tf.size(labels), tf.float32), 1.0)
