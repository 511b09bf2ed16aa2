"""Model names -> builders. A name fixes the paper's parts (docs/PAPER.md tables 4, 5); other
hyper-parameters come from the config (configs/<name>.yaml)."""

from __future__ import annotations

import dataclasses
import functools
import os

from qrec_tf import model_layout
from qrec_tf import schema as S
from qrec_tf.config import IMPLIED_BY_NAME, Config, ModelConfig, check_implied, load_config
from qrec_tf.data_dir import DataDirectory
from qrec_tf.models import row_frequencies
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.dcn import DCNModel
from qrec_tf.models.iv4rec import IV4RecModel
from qrec_tf.models.ple import PLEModel
from qrec_tf.models.queryrec import QueryRecModel
from qrec_tf.models.sesrec import SESRecModel

# name -> (class, the config values the name implies: qrec_tf.config.IMPLIED_BY_NAME)
MODELS = {name: (cls, IMPLIED_BY_NAME[name]) for name, cls in {
    "din": QueryRecModel,
    "din_query": QueryRecModel,
    "din_nip": QueryRecModel,
    "din_con": QueryRecModel,
    "din_con_diffusion": QueryRecModel,
    "queryrec": QueryRecModel,
    "dcn": DCNModel,
    # The other baselines of table 4; QueryRec's query flags and losses do not apply to them.
    "ple": PLEModel,
    "sesrec": SESRecModel,
    "iv4rec": IV4RecModel,
}.items()}


def check_name(config: ModelConfig) -> None:
    """ValueError for a name without a class, or a value that the name contradicts (a config
    changed after loading: loading checks it already)."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {sorted(MODELS)}")
    check_implied(config)


def load_vocabularies(data: DataDirectory | str, schema: S.Schema | None = None
                      ) -> Vocabularies:
    """Every vocabulary of the schema with its counts: those of a loaded data directory (each
    file read once, however many models are built on it), or, given a path, those under
    <path>/vocab/ (a model directory's copy, `warm_start.model_vocabularies`) read now."""
    if isinstance(data, DataDirectory):
        schema, read = schema or data.schema, data.vocab
    else:
        schema = schema or S.Schema.load(data)
        read = functools.partial(S.read_vocab, data)
    dtypes = {f.vocab: f.dtype for f in schema.features if f.vocab}
    values, counts = {}, {}
    for vocab, dtype in sorted(dtypes.items()):
        rows = read(vocab)
        values[vocab] = [int(v) if dtype == "int64" else v for v, _ in rows]
        counts[vocab] = [count for _, count in rows]
    return Vocabularies(values, counts)


def build_model(config: ModelConfig, data: DataDirectory | str) -> CTRModel:
    """The registered model for `config`, with lookups from the data's vocab/, and its variables
    created (on one row of padding built from the schema's specs, so no split is read):
    checkpoint restores need them. `data`: the loaded data directory (a path is loaded here).

    With `model.embedding_l2_counts: rows` the mini-batch aware L2's counts are the examples of
    the train split that hold each row (`row_frequencies`), counted here with the model's own
    lookups and the features it reads, so the model leaves this function with its counts."""
    check_name(config)
    data = DataDirectory.of(data)
    vocabularies = dataclasses.replace(load_vocabularies(data), oov_buckets=config.oov_buckets)
    model = build_with_vocabularies(config, data, vocabularies)
    if config.embedding_l2 and config.embedding_l2_counts == "rows":
        counted = row_frequencies.count_example_rows(model, data.dataset(
            "train", 4096, shuffle=False, features=model.input_feature_names()))
        model.use_row_counts(counted)
    return model


def build_with_vocabularies(config: ModelConfig, data: DataDirectory | str,
                            vocabularies: Vocabularies) -> CTRModel:
    """build_model with the given vocabularies (a warm start builds the previous model with its
    own): the data constants come from `data`, indexed by these vocabularies; the mini-batch
    aware L2's counts are the vocabularies' (the previous model of a warm start only gives its
    weights)."""
    check_name(config)
    data = DataDirectory.of(data)
    cls = MODELS[config.name][0]
    model = cls(config, data.schema, vocabularies,
                **cls.data_constants(config, data, vocabularies), name=config.name)
    model(data.schema.padding_batch(), training=False)
    return model


def load_trained_model(model_dir: str, data: DataDirectory | str) -> tuple[Config, CTRModel]:
    """(config, model): the model of a finished training run rebuilt from
    <model_dir>/config.yaml on `data` and its trained weights loaded; the model's vocabularies
    are checked against the data's first (`check_model_data`). `qrec_tf.evaluate` names it for
    the CLIs; the augment stage reads a trained model's item table through it."""
    config_path, weights = model_layout.finished_run_files(model_dir, repr(model_dir))
    data = DataDirectory.of(data)
    check_model_data(model_dir, data)   # one clear message, not a shape error in Keras
    config = load_config(config_path)
    model = build_model(config.model, data)
    model.load_weights(weights)
    return config, model


def check_model_data(model_dir: str, data_dir: DataDirectory | str) -> None:
    """ValueError, in one message, when the model in `model_dir` was built on other
    vocabularies than `data_dir`'s (its rows would be read as other ids). A model without
    <model_dir>/vocab/ (trained before it was kept) is not checked."""
    vocab_dir = model_layout.vocab_dir(model_dir)
    if not os.path.isdir(vocab_dir):
        return
    data = DataDirectory.of(data_dir)
    lineage = data.lineage or {}
    run = model_layout.read_run(model_dir) if os.path.exists(
        model_layout.run_path(model_dir)) else {}
    trained_on = (run.get("data_lineage") or {}).get("build_id", "unrecorded")
    for vocab in S.VOCABULARIES:
        mine = [value for value, _ in S.read_vocab(model_dir, vocab)]
        theirs = [value for value, _ in data.vocab(vocab)]
        if mine != theirs:
            extended = theirs[:len(mine)] == mine
            raise ValueError(
                f"the model in {model_dir} (trained on build {trained_on}) does not match the "
                f"data in {data.path} (build {lineage.get('build_id', 'unrecorded')}): vocabulary "
                f"{vocab!r} has {len(mine)} values there and {len(theirs)} here"
                + (", which extend them" if extended else ", in another order")
                + ". Score new data with the model's export (python -m qrec_tf.compare "
                  "--saved-models), or train on it with python -m qrec_tf.train --warm-start "
                  f"{model_dir}")
