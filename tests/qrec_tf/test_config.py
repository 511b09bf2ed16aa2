"""Config loading: YAML files, --set overrides, clear errors for mistakes."""

import glob

import pytest

from qrec_tf.config import IMPLIED_BY_NAME, load_config
from qrec_tf.models.registry import MODELS, check_name


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_every_shipped_config_loads_and_matches_its_registry_name(path):
    config = load_config(path)
    check_name(config.model)
    assert path.endswith(f"/{config.model.name}.yaml")


def test_every_registered_model_has_a_config_but_the_diffusion_variant():
    shipped = {p.split("/")[-1][:-5] for p in glob.glob("configs/*.yaml")}
    assert set(MODELS) - shipped <= {"din_con_diffusion"}


def test_overrides_are_typed():
    config = load_config("configs/queryrec.yaml",
                         ["model.embedding_dim=32", "train.epochs=1", "model.mlp_units=[8, 4]",
                          "train.learning_rate=1"])
    assert config.model.embedding_dim == 32 and config.train.epochs == 1
    assert config.model.mlp_units == [8, 4] and config.train.learning_rate == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.embedding_dims=3", "unknown model key"),
    ("model.embedding_dim=abc", "model.embedding_dim must be an integer"),
    ("model.query_pooling=3", "must be true or false"),
    ("epochs=3", "--set expects section.key=value"),
    ("model.positives=web", "model.positives must be"),
    ("train.batch_size=0", "batch_size and train.epochs must be >= 1"),
])
def test_mistakes_get_clear_messages(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/queryrec.yaml", [override])


def test_the_name_implies_its_query_flags_and_a_contradiction_names_the_key(tmp_path):
    assert all("query_pooling" not in open(p).read() and "query_encoder:" not in open(p).read()
               for p in glob.glob("configs/*.yaml"))      # the YAMLs do not restate them
    expected = {"din": (False, False), "din_query": (True, False), "din_nip": (False, True),
                "din_con": (True, False), "queryrec": (True, True), "dcn": (False, False),
                "ple": (False, False), "sesrec": (False, False), "iv4rec": (False, False)}
    for name, flags in expected.items():
        model = load_config(f"configs/{name}.yaml").model
        assert (model.query_pooling, model.query_encoder) == flags, name
    minimal = tmp_path / "din_con_diffusion.yaml"
    minimal.write_text("model:\n  name: din_con_diffusion\n")
    model = load_config(str(minimal)).model
    assert (model.query_pooling, model.query_encoder, model.positives) == (True, False,
                                                                           "diffusion")
    # Giving the implied value is allowed; a contradicting one fails at load, in one line.
    minimal.write_text("model:\n  name: din_query\n  query_pooling: true\n")
    assert load_config(str(minimal)).model.query_pooling
    minimal.write_text("model:\n  name: din_query\n  query_pooling: false\n")
    with pytest.raises(ValueError, match=r"^model.query_pooling is False, but model 'din_query' "
                                         r"implies True: leave model.query_pooling out"):
        load_config(str(minimal))
    with pytest.raises(ValueError, match="model.query_encoder is False, but model 'queryrec'"):
        load_config("configs/queryrec.yaml", ["model.query_encoder=false"])
    with pytest.raises(ValueError, match="model.contrastive_weight is 0.1, but model 'dcn'"):
        load_config("configs/dcn.yaml", ["model.contrastive_weight=0.1"])
    with pytest.raises(ValueError, match="unknown model 'dinn'; registered"):
        load_config("configs/din.yaml", ["model.name=dinn"])
    # A config changed after loading is still checked before a model is built.
    config = load_config("configs/din.yaml").model
    config.query_pooling = True
    with pytest.raises(ValueError, match="model.query_pooling is True, but model 'din'"):
        check_name(config)
    with pytest.raises(ValueError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_the_registry_and_the_implied_values_name_the_same_models():
    assert set(MODELS) == set(IMPLIED_BY_NAME)
    assert all(MODELS[name][1] is IMPLIED_BY_NAME[name] for name in MODELS)


def test_a_model_section_is_set_in_yaml_and_with_nested_overrides(tmp_path):
    config = load_config("configs/ple.yaml", ["model.ple.levels=3",
                                              "model.ple.expert_units=[8, 4]"]).model
    assert config.ple.levels == 3 and config.ple.expert_units == [8, 4]
    assert config.ple.task_experts == 1 and config.ple.search_task_weight == 1.0   # the YAML's
    assert load_config("configs/dcn.yaml").model.dcn.cross_layers == 2


@pytest.mark.parametrize("override, message", [
    ("model.ple.level=3", r"unknown model.ple key\(s\) \['level'\]"),
    ("model.ple.levels=two", "model.ple.levels must be an integer"),
    ("model.ple.levels=0", "model.ple.levels must be >= 1"),
    ("model.iv4rec.user_weight=-1", "model.iv4rec.user_weight must be >= 0"),
    ("model.sesrec=3", "model.sesrec must be a mapping"),
])
def test_a_model_section_is_as_strict_as_the_common_keys(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("configs/ple.yaml", [override])


def test_the_flat_keys_of_an_older_config_yaml_still_load(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("model:\n  name: iv4rec\n  iv_units: [16]\n  ple_levels: 3\n"
                   "  cross_layers: 4\n")
    config = load_config(str(old)).model
    assert config.iv4rec.units == [16] and config.ple.levels == 3 and config.dcn.cross_layers == 4
    assert load_config(str(old)).to_dict()["model"]["ple"]["levels"] == 3
    # a flat key given with --set is the section's key (the YAML's nested value is overridden)
    assert load_config("configs/ple.yaml", ["model.ple_levels=4"]).model.ple.levels == 4
    assert load_config(str(old), ["model.ple.levels=2"]).model.ple.levels == 2
    old.write_text("model:\n  name: ple\n  ple_levels: 3\n  ple: {levels: 2}\n")
    with pytest.raises(ValueError, match="same setting"):
        load_config(str(old))
