"""saved_config: a model directory's config.yaml written before the model sections loads."""

import pytest
import yaml

import qrec_tf.models.registry  # noqa: F401 (registers the model names)
from qrec_tf.saved_config import load_saved_config

# What a train run at 2f5ee32 wrote for din (abridged to the keys that matter: every key flat,
# the deleted ones at their defaults, the SAS keys din never read, every family's section).
OLD_DIN = {
    "model": {"name": "din", "embedding_dim": 16, "mlp_units": [200, 80],
              "attention_units": [80, 40], "query_pooling": False, "query_encoder": False,
              "sas_blocks": 2, "sas_bucketed": True, "nip_weight": 0.0,
              "contrastive_weight": 0.0, "query_dropout": 0.0, "query_fusion": "concat",
              "query_encoder_input": "vector", "query_attention_positions": False,
              "embedding_l2": 0.1, "embedding_l2_counts": "vocab",
              "attention_jit_compile": False, "attention_packed": True,
              "dcn": {"cross_layers": 2}, "ple": {"levels": 2}},
    "train": {"batch_size": 1024, "epochs": 2, "warm_start_optimizer": "reset"},
}


def write(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_an_old_din_config_loads_with_what_din_reads(tmp_path):
    config = load_saved_config(write(tmp_path, OLD_DIN))
    assert (config.model.name, config.model.embedding_dim, config.model.embedding_l2) == (
        "din", 16, 0.1)
    assert config.model.mlp_units == [200, 80] and config.train.epochs == 2
    assert config.model.din.query_pooling is False and config.model.din.nip_weight == 0.0


def test_an_old_sesrec_config_keeps_its_own_sas_keys(tmp_path):
    old = {"model": {"name": "sesrec", "sas_blocks": 1, "attention_softmax": True,
                     "sesrec": {"alignment_weight": 0.3}, "dcn": {"cross_layers": 2}}}
    config = load_saved_config(write(tmp_path, old))
    assert config.model.sesrec.sas_blocks == 1 and config.model.sesrec.alignment_weight == 0.3


@pytest.mark.parametrize("key,value", [("query_fusion", "bilinear"), ("query_dropout", 0.3),
                                       ("embedding_l2_counts", "rows")])
def test_a_model_trained_with_a_deleted_variant_is_refused_by_name(tmp_path, key, value):
    old = {**OLD_DIN, "model": {**OLD_DIN["model"], key: value}}
    with pytest.raises(ValueError, match=f"model.{key}={value!r}.*retrain"):
        load_saved_config(write(tmp_path, old))


def test_an_old_carried_optimizer_is_refused(tmp_path):
    old = {**OLD_DIN, "train": {"warm_start_optimizer": "carry"}}
    with pytest.raises(ValueError, match="train.warm_start_optimizer='carry'"):
        load_saved_config(write(tmp_path, old))
