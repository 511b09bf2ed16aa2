"""DCN (Wang et al., ADKDD'17) baseline on the same inputs: cross network (keras-rs FeatureCross)
and a deep MLP in parallel over [e_u || e_i || e_xu || e_xi || mean of the history items]."""

from __future__ import annotations

import dataclasses

import keras_rs
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig, check_ranges
from qrec_tf.layers.dense_stack import masked_mean
from qrec_tf.models.base import CTRModel, Vocabularies


@dataclasses.dataclass
class DCNConfig:
    """model.dcn: cross layers (keras-rs FeatureCross) beside the deep MLP (mlp_units)."""

    cross_layers: int = 2

    def validate(self, model: ModelConfig) -> None:
        check_ranges(self, "dcn", at_least_one=("cross_layers",))


# DCN has no target attention: a config that sets its keys is an error.
DCN_UNREAD = ("attention_units", "attention_activation", "attention_softmax")


class DCNModel(CTRModel):
    def __init__(self, config: ModelConfig, schema: S.Schema, vocabularies: Vocabularies,
                 **kwargs):
        super().__init__(config, schema, vocabularies, **kwargs)
        self.crosses = [keras_rs.layers.FeatureCross(name=f"cross{i}")
                        for i in range(config.dcn.cross_layers)]
        self.make_ctr_head("deep")

    def forward(self, features, training=False):
        _, target, hist_idx, history = self.target_and_history(features)
        history_mean = masked_mean(history, hist_idx != 0, 1)
        x0 = tf.concat([*self.context_embeddings(features), target, history_mean], axis=-1)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        hidden = tf.concat([x, self.ctr_mlp(x0, training=training)], axis=-1)
        return {"logits": tf.squeeze(self.ctr_logit(hidden), -1)}
