"""Every config key reaches the part of the model that reads it: the built layers carry the
value that the key was given (the keys whose effect on the scores is tested elsewhere are named
in docs/CONFIG.md; these are the structural ones)."""

import keras
import pytest

from qrec_tf.layers.dice import Dice
from qrec_tf.models.registry import MODELS
from qrec_tf.testing import random_data_constants
from tests.qrec_tf.models.test_queryrec import SCHEMA, VOCABS, load_config, tiny


def build(name, *extra):
    config = load_config(f"configs/{name}.yaml", tiny(name, *extra)).model
    return MODELS[name].cls(config, SCHEMA, VOCABS, name=name,
                            **random_data_constants(config, VOCABS))


def dense_units(sequential):
    return [layer.units for layer in sequential.layers if isinstance(layer, keras.layers.Dense)]


@pytest.mark.parametrize("name", ["din", "ple"])
def test_the_mlp_and_the_attention_keys_reach_their_layers(name):
    model = build(name, "model.mlp_units=[6, 3]", "model.mlp_activation=relu",
                  "model.attention_units=[5]", "model.attention_activation=relu",
                  "model.attention_softmax=true", "model.dropout=0.25")
    mlp = model.ctr_mlp if name == "din" else model.towers[0]
    assert dense_units(mlp) == [6, 3]
    assert not any(isinstance(layer, Dice) for layer in mlp.layers)   # relu, not dice
    assert [layer.rate for layer in mlp.layers
            if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.25]
    attention = model.history_attention
    assert (attention.hidden_units, attention.activation, attention.use_softmax) == (
        [5], "relu", True)
    assert not attention.dice_layers


def test_the_sas_keys_reach_each_family_s_encoder():
    encoder = build("din_nip", "model.din.sas_blocks=3", "model.din.sas_heads=2",
                    "model.din.sas_dropout=0.1").query_encoder
    assert (encoder.num_blocks, encoder.num_heads, encoder.dropout) == (3, 2, 0.1)
    sesrec = build("sesrec", "model.sesrec.sas_blocks=2", "model.sesrec.sas_heads=2",
                   "model.sesrec.sas_dropout=0.3")
    for encoder in (sesrec.feed_encoder, sesrec.search_encoder):
        assert (encoder.num_blocks, encoder.num_heads, encoder.dropout) == (2, 2, 0.3)


def test_the_contrastive_keys_reach_the_task():
    model = build("din_con", "model.din.contrastive_positives=3",
                  "model.din.contrastive_negatives=7", "model.din.contrastive_temperature=0.5",
                  "model.din.contrastive_weight=0.4")
    (task,) = model.tasks
    assert (task.weight, task.negatives, task.temperature) == (0.4, 7, 0.5)
    assert task.query_positives.shape[1] == 3    # random_data_constants: P = the key's value
