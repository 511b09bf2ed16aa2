"""Config loading: YAML files, --set overrides, clear errors for mistakes."""

import dataclasses
import glob
import re

import pytest

from qrec_tf.config import BACKBONE_KEYS, Config, load_config, model_family, reads_key
from qrec_tf.models.registry import MODELS, check_name

SHIPPED = sorted(p for p in glob.glob("configs/*.yaml") if not p.endswith("/base.yaml"))


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_loads_and_matches_its_registry_name(path):
    config = load_config(path)
    check_name(config.model)
    assert path.endswith(f"/{config.model.name}.yaml")


def test_every_registered_model_has_a_config_but_the_diffusion_variant():
    shipped = {p.split("/")[-1][:-5] for p in SHIPPED}
    assert set(MODELS) - shipped <= {"din_con_diffusion"}


def test_overrides_are_typed():
    config = load_config("configs/queryrec.yaml",
                         ["model.embedding_dim=32", "train.epochs=1", "model.mlp_units=[8, 4]",
                          "train.learning_rate=1"])
    assert config.model.embedding_dim == 32 and config.train.epochs == 1
    assert config.model.mlp_units == [8, 4] and config.train.learning_rate == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.embedding_dims=3", "model.embedding_dims is not a key of model 'queryrec'"),
    ("model.embedding_dim=abc", "model.embedding_dim must be an integer"),
    ("model.query_pooling=3", "must be true or false"),
    ("epochs=3", "--set expects section.key=value"),
    ("model.positives=web", "model.din.positives must be"),
    ("model.din.positives=web", "model.din.positives must be"),
    ("train.batch_size=0", "batch_size and train.epochs must be >= 1"),
])
def test_mistakes_get_clear_messages(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/queryrec.yaml", [override])


def test_the_name_implies_its_query_flags_and_a_contradiction_names_the_key(tmp_path):
    assert all("query_pooling" not in open(p).read() and "query_encoder:" not in open(p).read()
               for p in SHIPPED)      # the YAMLs do not restate them
    expected = {"din": (False, False), "din_query": (True, False), "din_nip": (False, True),
                "din_con": (True, False), "queryrec": (True, True)}
    for name, flags in expected.items():
        din = load_config(f"configs/{name}.yaml").model.din
        assert (din.query_pooling, din.query_encoder) == flags, name
    minimal = tmp_path / "din_con_diffusion.yaml"
    minimal.write_text("model:\n  name: din_con_diffusion\n")
    din = load_config(str(minimal)).model.din
    assert (din.query_pooling, din.query_encoder, din.positives) == (True, False, "diffusion")
    # Giving the implied value is allowed; a contradicting one fails at load, in one line.
    minimal.write_text("model:\n  name: din_query\n  din: {query_pooling: true}\n")
    assert load_config(str(minimal)).model.din.query_pooling
    minimal.write_text("model:\n  name: din_query\n  query_pooling: false\n")
    with pytest.raises(ValueError, match=r"^model.din.query_pooling is False, but model "
                                         r"'din_query' implies True: leave it out"):
        load_config(str(minimal))
    with pytest.raises(ValueError, match="model.din.query_encoder is False, but model 'queryrec'"):
        load_config("configs/queryrec.yaml", ["model.query_encoder=false"])
    with pytest.raises(ValueError, match="unknown model 'dinn'; registered"):
        load_config("configs/din.yaml", ["model.name=dinn"])
    # A config changed after loading is still checked before a model is built.
    config = load_config("configs/din.yaml").model
    config.din.query_pooling = True
    with pytest.raises(ValueError, match="model.din.query_pooling is True, but model 'din'"):
        check_name(config)
    with pytest.raises(ValueError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("name, override, message", [
    # a key of a part the model does not have
    ("din", "model.din.sas_blocks=1", "model.din.sas_blocks is set, but model 'din' does not"),
    ("din_query", "model.sas_heads=2", "model.din.sas_heads is set, but model 'din_query'"),
    ("din_nip", "model.contrastive_temperature=0.5", "model.din.contrastive_temperature is set"),
    ("din_nip", "model.query_attention_target=item", "model.din.query_attention_target is set"),
    # a backbone key that the model never reads, another family's section or key
    ("dcn", "model.attention_units=[4]", "model.attention_units is set, but model 'dcn' does "
                                         "not read it"),
    ("dcn", "model.contrastive_weight=0.1", "model.contrastive_weight is not a key of model "
                                            "'dcn'"),
    ("dcn", "model.ple.levels=3", "model.ple is not a key of model 'dcn'"),
    ("ple", "model.embedding_l2=0.1", "model.embedding_l2 is set, but model 'ple' does not"),
    ("sesrec", "model.din.nip_weight=1", "model.din is not a key of model 'sesrec'"),
])
def test_a_key_that_the_model_does_not_read_is_an_error(name, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(f"configs/{name}.yaml", [override])
    assert not reads_key(name, override)


def test_a_section_key_may_be_given_flat_or_nested_but_not_both(tmp_path):
    assert load_config("configs/queryrec.yaml", ["model.nip_weight=0.2"]).model.din.nip_weight \
        == 0.2
    assert load_config("configs/queryrec.yaml",
                       ["model.din.nip_weight=0.3"]).model.din.nip_weight == 0.3
    assert load_config("configs/sesrec.yaml", ["model.sas_blocks=2"]).model.sesrec.sas_blocks == 2
    both = tmp_path / "both.yaml"
    both.write_text("model:\n  name: din_nip\n  nip_weight: 0.1\n  din: {nip_weight: 0.2}\n")
    with pytest.raises(ValueError, match="model.nip_weight and model.din.nip_weight are the same"):
        load_config(str(both))


def test_the_registry_is_the_one_list_of_models():
    assert all(model_family(name) is MODELS[name].family for name in MODELS)
    # The DIN family's names are compositions of the query side's parts.
    assert {name for name, model in MODELS.items() if model.family.key == "din"} == {
        "din", "din_query", "din_nip", "din_con", "din_con_diffusion", "queryrec"}
    assert MODELS["din"].implied == dict(query_pooling=False, query_encoder=False,
                                         nip_weight=0.0, contrastive_weight=0.0)
    assert MODELS["queryrec"].implied == dict(query_pooling=True, query_encoder=True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_resolved_config_loads_back_the_same(name, tmp_path):
    extra = ["model.din.positives_dir=/tmp/p"] if name == "din_con_diffusion" else []
    config = load_config(f"configs/{name}.yaml", extra)
    saved = tmp_path / "config.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(str(saved)) == config
    assert Config.from_dict(config.to_dict()) == config


def test_a_file_extends_its_base_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {embedding_dim: 8, mlp_units: [4]}\n"
                                        "train: {epochs: 2, batch_size: 64}\n")
    (tmp_path / "m.yaml").write_text("extends: base.yaml\nmodel: {name: dcn, embedding_dim: 4}\n"
                                     "train: {epochs: 3}\n")
    config = load_config(str(tmp_path / "m.yaml"))
    assert (config.model.embedding_dim, config.model.mlp_units) == (4, [4])
    assert (config.train.epochs, config.train.batch_size) == (3, 64)
    (tmp_path / "base.yaml").write_text("extends: m.yaml\n")
    with pytest.raises(ValueError, match="extends it back"):
        load_config(str(tmp_path / "m.yaml"))


def test_every_key_is_in_the_one_table_of_docs_config_md():
    table = open("docs/CONFIG.md").read()
    keys = {f"model.{k}" for k in BACKBONE_KEYS} | {
        f"model.{model.family.key}.{f.name}" for model in MODELS.values()
        for f in dataclasses.fields(model.family.section)} | {
        f"train.{f.name}" for f in dataclasses.fields(Config().train)}
    missing = sorted(k for k in keys if f"`{k}`" not in table)
    assert not missing, f"docs/CONFIG.md has no row for {missing}"


def test_a_model_section_is_set_in_yaml_and_with_nested_overrides(tmp_path):
    config = load_config("configs/ple.yaml", ["model.ple.levels=3",
                                              "model.ple.expert_units=[8, 4]"]).model
    assert config.ple.levels == 3 and config.ple.expert_units == [8, 4]
    assert config.ple.task_experts == 1 and config.ple.search_task_weight == 1.0   # the YAML's
    assert load_config("configs/dcn.yaml").model.dcn.cross_layers == 2


@pytest.mark.parametrize("name, override, message", [
    ("ple", "model.ple.level=3", r"unknown model.ple key\(s\) \['level'\]"),
    ("ple", "model.ple.levels=two", "model.ple.levels must be an integer"),
    ("ple", "model.ple.levels=0", "model.ple.levels must be >= 1"),
    ("iv4rec", "model.iv4rec.user_weight=-1", "model.iv4rec.user_weight must be >= 0"),
    ("sesrec", "model.sesrec=3", "model.sesrec must be a mapping"),
    ("sesrec", "model.sesrec.sas_heads=3", "model.embedding_dim must be divisible by model.sesrec"),
    ("din_nip", "model.din.sas_blocks=0", "model.din.sas_heads and model.din.sas_blocks must be"),
])
def test_a_model_section_is_as_strict_as_the_common_keys(name, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(f"configs/{name}.yaml", [override])


def test_the_flat_keys_of_an_older_config_yaml_still_load(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("model:\n  name: iv4rec\n  iv_units: [16]\n  iv_item_queries: 3\n")
    config = load_config(str(old)).model
    assert config.iv4rec.units == [16] and config.iv4rec.item_queries == 3
    assert load_config(str(old)).to_dict()["model"]["iv4rec"]["units"] == [16]
    # a flat key given with --set is the section's key (the YAML's nested value is overridden)
    assert load_config("configs/ple.yaml", ["model.ple_levels=4"]).model.ple.levels == 4
    assert load_config(str(old), ["model.iv4rec.units=[2]"]).model.iv4rec.units == [2]
    old.write_text("model:\n  name: ple\n  ple_levels: 3\n  ple: {levels: 2}\n")
    with pytest.raises(ValueError, match="same setting"):
        load_config(str(old))
    old.write_text("model:\n  name: iv4rec\n  ple_levels: 3\n")   # another model's key
    with pytest.raises(ValueError, match="model.ple is not a key of model 'iv4rec'"):
        load_config(str(old))
