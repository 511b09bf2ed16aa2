"""Model names -> builders. A name fixes the paper's parts (docs/PAPER.md tables 4, 5); other
hyper-parameters come from the config (configs/<name>.yaml)."""

from __future__ import annotations

import dataclasses

from qrec_tf import schema as S
from qrec_tf.config import IMPLIED_BY_NAME, ModelConfig, check_implied
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


def load_vocabularies(data_dir: str, schema: S.Schema) -> Vocabularies:
    """Every vocabulary of the schema with its counts, from <data_dir>/vocab/."""
    dtypes = {f.vocab: f.dtype for f in schema.features if f.vocab}
    values, counts = {}, {}
    for vocab, dtype in sorted(dtypes.items()):
        rows = S.read_vocab(data_dir, vocab)
        values[vocab] = [int(v) if dtype == "int64" else v for v, _ in rows]
        counts[vocab] = [count for _, count in rows]
    return Vocabularies(values, counts)


def build_model(config: ModelConfig, data_dir: str) -> CTRModel:
    """The registered model for `config`, with lookups from <data_dir>/vocab/, and its variables
    created (on one row of padding built from the schema's specs, so no split is read):
    checkpoint restores need them."""
    check_name(config)
    schema = S.Schema.load(data_dir)
    vocabularies = dataclasses.replace(load_vocabularies(data_dir, schema),
                                       oov_buckets=config.oov_buckets)
    return build_with_vocabularies(config, data_dir, schema, vocabularies)


def build_with_vocabularies(config: ModelConfig, data_dir: str, schema: S.Schema,
                            vocabularies: Vocabularies) -> CTRModel:
    """build_model with the given vocabularies (a warm start builds the previous model with its
    own): the data constants come from `data_dir`, indexed by these vocabularies."""
    check_name(config)
    cls = MODELS[config.name][0]
    model = cls(config, schema, vocabularies,
                **cls.data_constants(config, data_dir, schema, vocabularies), name=config.name)
    model(schema.padding_batch(), training=False)
    return model
