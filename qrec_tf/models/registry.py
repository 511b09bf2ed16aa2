"""Model names -> builders. A name fixes the paper's parts (docs/PAPER.md tables 4, 5); other
hyper-parameters come from the config (configs/<name>.yaml)."""

from __future__ import annotations

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.models.base import CTRModel, Vocabularies
from qrec_tf.models.dcn import DCNModel
from qrec_tf.models.iv4rec import IV4RecModel
from qrec_tf.models.ple import PLEModel
from qrec_tf.models.queryrec import QueryRecModel
from qrec_tf.models.sesrec import SESRecModel

# What a name implies about QueryRec's parts: a model without any of them (DIN, the other
# baselines of table 4) and QueryRec's ablations of table 5.
NO_QUERY_SIDE = dict(query_pooling=False, query_encoder=False, nip_weight=0.0,
                     contrastive_weight=0.0)
POOLING_ONLY = dict(query_pooling=True, query_encoder=False, nip_weight=0.0)

# name -> (class, the config flags the name implies; the others are free)
MODELS = {
    "din": (QueryRecModel, NO_QUERY_SIDE),
    "din_query": (QueryRecModel, {**POOLING_ONLY, "contrastive_weight": 0.0}),
    "din_nip": (QueryRecModel, dict(query_pooling=False, query_encoder=True,
                                    contrastive_weight=0.0)),
    "din_con": (QueryRecModel, {**POOLING_ONLY, "positives": "log"}),
    "din_con_diffusion": (QueryRecModel, {**POOLING_ONLY, "positives": "diffusion"}),
    "queryrec": (QueryRecModel, {}),
    "dcn": (DCNModel, {}),
    # The other baselines of table 4; QueryRec's query flags and losses do not apply to them.
    "ple": (PLEModel, NO_QUERY_SIDE),
    "sesrec": (SESRecModel, NO_QUERY_SIDE),
    "iv4rec": (IV4RecModel, NO_QUERY_SIDE),
}


def check_name(config: ModelConfig) -> None:
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; registered: {sorted(MODELS)}")
    for key, value in MODELS[config.name][1].items():
        if getattr(config, key) != value:
            raise ValueError(f"model {config.name!r} requires model.{key}={value!r}, the config "
                             f"has {getattr(config, key)!r} (use model name queryrec for free "
                             "combinations)")


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
    vocabularies = load_vocabularies(data_dir, schema)
    cls = MODELS[config.name][0]
    model = cls(config, schema, vocabularies,
                **cls.data_constants(config, data_dir, schema, vocabularies), name=config.name)
    model(schema.padding_batch(), training=False)
    return model
